"""One run of an experiment config (``config.mode``): train one fold's stages or evaluate a checkpoint; typed results
(``megraph_jax.train.results``), ``results.json`` and the F1 table.

Sweeps (``megraph_jax.launch.sweep``) are sets of such runs and build their tables from the same results: mode 'folds'
(one mode-'train' run per fold, ``sweep.run_folds``), the paper's Table 3 ablation
(``configs/sweeps/table3_ablation.py``), grids.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from megraph_jax import checkpointing, model_factory, sharding, stage_dirs
from megraph_jax.data import datasets, input_pipeline
from megraph_jax.errors import CheckpointAUsError, CheckpointError, ConfigError, StageOneMissingError, WorkdirError
from megraph_jax.train import initialization, reporting
from megraph_jax.train import stage as trainer
from megraph_jax.train.preemption import Preempted, StopRequest
from megraph_jax.train.results import FoldResult, RunResult, StageResult, table

MODES = ("train", "stage1", "stage2", "eval", "folds")
STAGES = {"train": (1, 2), "folds": (1, 2), "stage1": (1,), "stage2": (2,)}


def _stage2_init(config, workdir: str, fold: int, train_data: datasets.SplitData) -> str:
  """Stage 1 of this fold in ``workdir`` that a fresh stage 2 starts from: its last checkpoint, or its best."""
  stage1_dir = stage_dirs.stage_dir(workdir, fold, 1)
  if config.stage2.init not in ("last", "best", "none"):
    raise ConfigError(f"config key 'stage2.init' = {config.stage2.init!r}; choose 'last', 'best' or 'none'")
  done = config.stage1.epochs * input_pipeline.num_train_steps_per_epoch(len(train_data.paths), config.batch_size)
  latest = stage_dirs.latest_step(stage1_dir)
  if latest is None or latest < done:
    raise StageOneMissingError(stage1_dir, fold, latest, done)
  return stage_dirs.checkpoints_dir(stage1_dir) if config.stage2.init == "last" else stage_dirs.best_dir(stage1_dir)


def _fold_result(dataset: datasets.Dataset, data: datasets.FoldData, checkpoint: str = "") -> FoldResult:
  baseline = reporting.all_positive_f1(np.asarray(data.test.labels))
  return FoldResult(fold=data.fold, dataset_root=dataset.root, num_train=len(data.train.paths),
                    num_test=len(data.test.paths), all_positive_f1=dict(zip(dataset.au_names, baseline.tolist())),
                    checkpoint=checkpoint)  # fmt: skip


def run_fold(config, workdir: str, fold: int, stages: tuple[int, ...], stop: StopRequest) -> FoldResult:
  """Trains ``stages`` of one fold on its data, read once; a fresh stage 2 starts from stage 1 of the same workdir
  (``stage2.init``)."""
  dataset = datasets.from_config(config, workdir)
  data = dataset.fold_data(fold, config.dataset.eval_split, config.optim.class_weights)
  out = _fold_result(dataset, data)
  for i, stage in enumerate(stages):
    sdir = stage_dirs.stage_dir(workdir, fold, stage)
    init = config.init_from if i == 0 and config.init_from else None
    if stage == 2 and init is None and not stage_dirs.has_checkpoints(sdir):
      init = _stage2_init(config, workdir, fold, data.train) if config.stage2.init != "none" else None
    out = out.with_stage(trainer.train_stage(config, sdir, stage=stage, data=data, stop=stop, init_from=init))
  return out


def _check_checkpoint_aus(config, dataset: datasets.Dataset) -> None:
  num_aus, au_names = initialization.checkpoint_aus(config.checkpoint)
  want = list(dataset.au_names)
  if (num_aus is not None and num_aus != len(want)) or (au_names is not None and list(au_names) != want):
    raise CheckpointAUsError(config.checkpoint, num_aus, au_names, config.dataset.name, want)


def evaluate_checkpoint(config, workdir: str) -> FoldResult:
  """Mode 'eval': ``config.checkpoint`` on the test split of ``config.dataset.fold``."""
  if not config.checkpoint:
    raise ConfigError("mode 'eval' needs --config.checkpoint=<stage dir, best/ dir, convert dir or official .pth>")
  if not os.path.exists(os.path.expanduser(config.checkpoint)):
    raise CheckpointError(f"config key 'checkpoint' = {config.checkpoint!r}: no such file or folder")
  dataset = datasets.from_config(config, workdir)
  data = dataset.fold_data(config.dataset.fold, config.dataset.eval_split, config.optim.class_weights)
  _check_checkpoint_aus(config, dataset)
  model = model_factory.eval_view(initialization.load_for_config(config.checkpoint, config))
  graphdef, state = nnx.split(model)
  mesh = sharding.make_mesh()
  evaluate = trainer.evaluator(graphdef, data.class_weights, trainer.EvalSettings.from_config(config, mesh), mesh)
  result = evaluate(sharding.put_replicated(state, mesh), data.test)
  stage = model.STAGE  # every head's stage 2 (OpenGraphAU's too), not a class check
  out = _fold_result(dataset, data, checkpoint=config.checkpoint)
  return out.with_stage(StageResult(stage, data.fold, last=result, best=result))


def _positive_int(config, key: str) -> None:
  value = config
  for part in key.split("."):
    value = value[part]
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(f"config key {key!r} = {value!r}: must be a positive integer; set --config.{key}=<n>")


def check_config(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The config's own problems, found before anything is written or read: a :class:`ConfigError` naming the key
  and what to do. Returns the stages a training mode trains (``()`` for mode 'eval')."""
  if config.mode not in MODES:
    raise ConfigError(f"config key 'mode' = {config.mode!r}; choose one of {MODES}")
  for key in ("batch_size", "eval_batch_size", "keep_checkpoints", "eval_every_epochs"):
    _positive_int(config, key)
  if config.mode == "folds":
    key, value, folds, example = "dataset.folds", tuple(config.dataset.folds), list(config.dataset.folds), "(1,2,3)"
  else:
    key, value, folds, example = "dataset.fold", config.dataset.fold, [config.dataset.fold], "1"
  known = (*datasets.FOLDS, datasets.NO_FOLDS)
  if not folds or any(isinstance(k, bool) or k not in known for k in folds):
    raise ConfigError(
      f"config key {key!r} = {value!r}: folds are {', '.join(map(str, datasets.FOLDS))} (the official subject-"
      f"independent 3-fold split) or {datasets.NO_FOLDS} (a layout without folds); e.g. --config.{key}={example}"
    )
  split = config.dataset.eval_split
  if split not in datasets.SPLITS:
    raise ConfigError(f"config key 'dataset.eval_split' = {split!r}; choose one of {datasets.SPLITS}")
  if split == "val" and any(k != datasets.NO_FOLDS for k in folds):
    raise ConfigError(
      f"config key 'dataset.eval_split' = 'val': split 'val' exists only in the layout without folds (fold 0), not "
      f"with {key} = {value!r}; evaluate on 'test'"
    )
  if config.mode == "eval":
    return ()
  stages = STAGES[config.mode]
  if config.model.head == "baseline" and config.mode != "stage2":
    stages = (1,)  # one model, no graph stage (ModelSpec.from_config rejects mode 'stage2')
  for s in stages:
    _positive_int(config, f"stage{s}.epochs")
    model_factory.ModelSpec.from_config(config, s)  # a ConfigError naming the model key
  return stages


def _make_workdir(workdir: str) -> str:
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"--workdir {workdir}: a file, not a directory; name a new or existing directory")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:  # a parent that is a file, no permission, a read-only file system
    raise WorkdirError(
      f"--workdir {workdir}: cannot create the directory ({e.strerror or e}); name one you can write"
    ) from e
  return path


def _recorded_wall_time(path: str, mode: str, folds: dict[int, FoldResult]) -> float | None:
  """``wall_time_s`` of the results file ``path`` when it is of the same mode and folds, else None."""
  try:
    earlier = RunResult.read(path)
  except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: this run's time
    return None
  same = earlier.mode == mode and set(earlier.folds) == set(folds)
  return earlier.wall_time_s if same and earlier.wall_time_s > 0 else None


def report(result: RunResult, name: str = "results") -> None:
  """Writes ``<name>.json`` / ``<name>.md`` (the F1 table) of ``result`` into its workdir and prints the table
  (process 0)."""
  if jax.process_index() == 0:
    text = table({"run": result})
    reporting.write_results(result.workdir, result.to_json(), f"# F1 (%) on the test split\n\n{text}", name=name)
    print(text, flush=True)


def run(config: ml_collections.ConfigDict, workdir: str, *, results_name: str = "") -> RunResult:
  """Runs ``config.mode`` on ``config.dataset.fold``; returns the results and writes them to ``workdir``.

  Training modes write results.json / results.md (``results_name`` when given: a fold of mode 'folds') and hold the
  workdir's lock; mode 'eval' writes results_eval.json / results_eval.md beside them. A stop request returns a result
  with ``preempted``. A rerun that trains no step (every stage finished) keeps the ``wall_time_s`` of the results
  file it replaces. Mode 'folds' is a sweep of such runs (``megraph_jax.launch.sweep.run_folds``), not run here.
  """
  stages = check_config(config)
  if config.mode == "folds":
    raise ConfigError(
      "mode 'folds' is a sweep of mode-'train' runs, one per fold: run it with python main.py (or "
      "megraph_jax.launch.sweep.run_config)"
    )
  workdir = _make_workdir(workdir)
  reporting.quiet_library_logs()
  t0 = time.time()
  stop = StopRequest(config.stop_after_steps).install()
  fold = config.dataset.fold
  try:
    if config.mode == "eval":
      result = evaluate_checkpoint(config, workdir)
    else:
      with checkpointing.WorkdirLock(workdir):
        result = run_fold(config, workdir, fold, stages, stop)
  except Preempted as e:
    logging.warning("%s", e)
    return RunResult(config.mode, workdir, preempted=True, message=str(e))
  finally:
    stop.uninstall()
  folds = {fold: result}
  name = results_name or ("results_eval" if config.mode == "eval" else "results")
  wall_time = time.time() - t0
  if config.mode != "eval" and stop.steps_run == 0:  # a rerun of a finished run: the training's time stays
    wall_time = _recorded_wall_time(os.path.join(workdir, f"{name}.json"), config.mode, folds) or wall_time
  out = RunResult(config.mode, workdir, folds=folds, au_names=tuple(result.all_positive_f1), wall_time_s=wall_time,
                  config=config.to_dict())  # fmt: skip
  report(out, name)
  return out
