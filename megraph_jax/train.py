"""Training and evaluation of ME-GraphAU's two stages: pure jitted steps, the epoch loop, and the run modes."""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx

from megraph_jax import (
  checkpointing,
  datasets,
  initialization,
  input_pipeline,
  losses,
  model_factory,
  optim,
  reporting,
  sharding,
  task,
)
from megraph_jax.errors import CheckpointError, ConfigError, TrainingDiverged
from megraph_jax.metrics import AUMetrics, confusion_counts
from megraph_jax.models.megraph import Stage2Model
from megraph_jax.preemption import Preempted, StopRequest

MODES = ("train", "stage1", "stage2", "eval", "folds")


# ----------------------------------------------------------------------------- pure steps


def train_step(
  graphdef: nnx.GraphDef,
  state: nnx.State,
  opt_state: Any,
  batch: dict[str, jax.Array],
  *,
  tx: optax.GradientTransformation,
  class_weights: jax.Array,
  lam: float,
) -> tuple[nnx.State, Any, dict[str, jax.Array]]:
  """One AdamW step on a global batch; BatchNorm statistics and DropPath RNG advance inside ``state``."""
  model = nnx.merge(graphdef, state)

  def loss_fn(m):
    terms = task.loss_terms(m(batch["image"]), batch, class_weights, lam)  # [B, H, W, 3] -> scalars
    return terms["total"], terms

  grads, terms = nnx.grad(loss_fn, has_aux=True)(model)  # d/d nnx.Param; batch stats update in place
  params = nnx.state(model, nnx.Param)
  updates, opt_state = tx.update(grads, opt_state, params)
  nnx.update(model, optax.apply_updates(params, updates))
  new_state = nnx.state(model)
  variables = jax.tree.leaves(nnx.state(model, nnx.Param, nnx.BatchStat))
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in variables]))  # 0 if a weight or statistic is inf/NaN
  metrics = {**terms, "grad_norm": optax.tree.norm(grads), "finite_state": finite.astype(jnp.float32)}
  return new_state, opt_state, metrics


def eval_step(
  graphdef: nnx.GraphDef, state: nnx.State, batch: dict[str, jax.Array], *, class_weights: jax.Array
) -> dict[str, jax.Array]:
  """Confusion counts ``[N, 4]`` and the summed L_WA of the real (mask = 1) examples of a padded batch."""
  out = nnx.merge(graphdef, state)(batch["image"])
  mask = batch["mask"]
  n = jnp.sum(mask.astype(jnp.float32))
  wa = losses.weighted_asymmetric_loss(out["au_probs"], batch["label"], class_weights, mask=mask)
  return {"counts": confusion_counts(out["au_probs"], batch["label"], mask), "wa_sum": wa * n, "n": n}


def _eval_graphdef(graphdef: nnx.GraphDef, state: nnx.State) -> nnx.GraphDef:
  """The graph of the same model in eval mode (running BatchNorm statistics, no DropPath)."""
  model = nnx.merge(graphdef, state)
  model.eval()
  return nnx.graphdef(model)


def jit_train_step(graphdef, tx, class_weights, lam, mesh, state_sharding=None, opt_sharding=None):
  """``train_step`` jitted once: state/opt state as given (default replicated), batch split on 'data'."""
  repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
  state_sharding = repl if state_sharding is None else state_sharding
  opt_sharding = repl if opt_sharding is None else opt_sharding
  fn = functools.partial(train_step, graphdef, tx=tx, class_weights=class_weights, lam=lam)
  donate = (0, 1) if jax.default_backend() != "cpu" else ()
  return jax.jit(
    fn,
    in_shardings=(state_sharding, opt_sharding, data),
    out_shardings=(state_sharding, opt_sharding, repl),
    donate_argnums=donate,
  )


def jit_eval_step(graphdef, class_weights, mesh, state_sharding=None):
  """``eval_step`` jitted once with explicit shardings."""
  repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
  state_sharding = repl if state_sharding is None else state_sharding
  fn = functools.partial(eval_step, graphdef, class_weights=class_weights)
  return jax.jit(fn, in_shardings=(state_sharding, data), out_shardings=repl)


# ----------------------------------------------------------------------------- evaluation


def evaluate(p_eval_step, state, data, *, root: str, config: ml_collections.ConfigDict, mesh) -> dict[str, Any]:
  """Per-AU F1/accuracy, their means and the L_WA of ``state`` on ``data`` (all examples, padded batches)."""
  batch = _eval_batch_size(config, mesh)
  ds = input_pipeline.create_eval_dataset(
    data,
    root=root,
    batch_size=batch // jax.process_count(),
    image_size=config.dataset.image_size,
    crop_size=config.dataset.crop_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  data_sharding = sharding.data_sharded(mesh)
  totals = None
  for b in ds.as_numpy_iterator():
    out = p_eval_step(state, sharding.put_batch(_model_inputs(b), data_sharding))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  result = AUMetrics(task.au_names(config.dataset)).update(totals["counts"], int(round(float(totals["n"])))).compute()
  result["loss"] = float(totals["wa_sum"] / max(totals["n"], 1.0))
  return result


def _eval_batch_size(config, mesh) -> int:
  n = mesh.devices.size
  return -(-config.eval_batch_size // n) * n  # rounded up to a multiple of the devices


def _model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: batch[k] for k in ("image", "label", "relation", "mask") if k in batch}


# ----------------------------------------------------------------------------- one stage


def _write_eval(writer, step: int, metrics: dict[str, Any]) -> None:
  scalars = {
    "eval/mean_f1": metrics["mean_f1"],
    "eval/mean_accuracy": metrics["mean_accuracy"],
    "eval/loss_wa": metrics["loss"],
  }
  scalars.update({f"eval/f1_{k}": v for k, v in metrics["f1"].items()})
  scalars.update({f"eval/accuracy_{k}": v for k, v in metrics["accuracy"].items()})
  writer.write_scalars(step, scalars)


def _read_history(stage_dir: str, up_to_step: int) -> list[dict[str, Any]]:
  path = os.path.join(stage_dir, "history.json")
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [h for h in json.load(f) if h["step"] <= up_to_step]


def _write_history(stage_dir: str, history: list[dict[str, Any]]) -> None:
  if jax.process_index() == 0:
    tmp = os.path.join(stage_dir, "history.json.tmp")
    with open(tmp, "w") as f:
      json.dump(history, f, indent=1)
    os.replace(tmp, os.path.join(stage_dir, "history.json"))


def _stage_settings(config, stage: int) -> ml_collections.ConfigDict:
  return config.stage1 if stage == 1 else config.stage2


def train_stage(
  config: ml_collections.ConfigDict,
  stage_dir: str,
  *,
  stage: int,
  fold: int,
  root: str,
  train_data,
  test_data,
  stop: StopRequest,
  init_from: str | None = None,
) -> dict[str, Any]:
  """Trains (or resumes) one stage in ``stage_dir``; returns the last and best evaluation results.

  Nothing is written into ``stage_dir`` before a resume's config check and restore succeeded. Each epoch
  is checkpointed before it is evaluated, and evaluated exactly once (also when a stop landed on its
  last step). A non-finite loss, gradient or state stops training before anything non-finite is saved.
  """
  settings = _stage_settings(config, stage)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  steps_per_epoch = input_pipeline.num_train_steps_per_epoch(len(train_data.paths), config.batch_size)
  if steps_per_epoch < 1:
    raise ConfigError(
      f"config key 'batch_size' = {config.batch_size} exceeds the {len(train_data.paths)} "
      f"training images of fold {fold}; lower it"
    )
  total_steps = settings.epochs * steps_per_epoch
  tag = f"fold {fold} stage {stage}"

  resuming = checkpointing.has_checkpoints(stage_dir)
  if resuming:  # refuse a changed experiment before touching anything
    checkpointing.check_stage_config(stage_dir, experiment_config(config, stage))
  model = model_factory.build_from_config(config, stage)
  model.train()
  ckpt = checkpointing.StageCheckpoints(stage_dir, keep=config.keep_checkpoints)
  graphdef, state = nnx.split(model)
  tx, schedule = optim.create_optimizer(
    nnx.state(model, nnx.Param),
    learning_rate=settings.learning_rate,
    total_steps=total_steps,
    weight_decay=config.optim.weight_decay,
    b1=config.optim.b1,
    b2=config.optim.b2,
    eps=config.optim.eps,
    clip_norm=config.optim.clip_norm,
    trainable_params=settings.trainable_params,
    decay_params=settings.decay_params,
    stage_key=f"stage{stage}",
  )
  opt_state = tx.init(nnx.state(model, nnx.Param))
  step = 0
  restored = ckpt.restore(state, opt_state) if resuming else None
  if restored is not None:
    step, state, opt_state = restored
    logging.info(
      "%s: resuming from step %d (epoch %d, batch %d) in %s",
      tag,
      step,
      step // steps_per_epoch,
      step % steps_per_epoch,
      ckpt.checkpoint_dir(step),
    )
  else:  # a fresh start: initial weights, then the stage's config and model description
    source = initialization.init_stage_weights(model, config, init_from)
    logging.info("%s: initialised from %s", tag, source)
    graphdef, state = nnx.split(model)
    checkpointing.write_stage_config(stage_dir, experiment_config(config, stage), init=source)
    checkpointing.write_model_json(stage_dir, model_factory.ModelSpec.from_config(config, stage).to_json())
  eval_graphdef = _eval_graphdef(graphdef, state)
  state_sharding = sharding.state_shardings(state, mesh, config.sharding.params, config.sharding.fsdp_min_size)
  opt_sharding = sharding.state_shardings(opt_state, mesh, config.sharding.params, config.sharding.fsdp_min_size)
  state, opt_state = jax.device_put((state, opt_state), (state_sharding, opt_sharding))
  del model

  class_weights = jnp.asarray(_class_weights(config, root, fold, train_data))
  lam = float(settings.lam) if stage == 2 else 0.0
  p_train_step = jit_train_step(graphdef, tx, class_weights, lam, mesh, state_sharding, opt_sharding)
  p_eval_step = jit_eval_step(eval_graphdef, class_weights, mesh, state_sharding)
  data_sharding = sharding.data_sharded(mesh)

  writer = metric_writers.create_default_writer(stage_dir, just_logging=jax.process_index() > 0)
  report = periodic_actions.ReportProgress(
    num_train_steps=total_steps, writer=writer, every_steps=config.log_every_steps
  )
  history = _read_history(stage_dir, step)
  log_every = max(int(config.log_every_steps), 1)
  pending, t_log, steps_at_log = [], time.time(), step
  guard = _FiniteGuard(tag, stage, settings.learning_rate, steps_per_epoch, schedule, ckpt)
  # A stop on an epoch's last step leaves that epoch unevaluated: resume at its end, not after it.
  first_epoch = (step - 1) // steps_per_epoch if step else 0
  try:
    for epoch in range(first_epoch, settings.epochs):
      if step < (epoch + 1) * steps_per_epoch:
        ds = input_pipeline.create_train_dataset(
          train_data,
          root=root,
          batch_size=config.batch_size // jax.process_count(),
          image_size=config.dataset.image_size,
          crop_size=config.dataset.crop_size,
          seed=config.seed,
          epoch=epoch,
          process_index=jax.process_index(),
          process_count=jax.process_count(),
          color_jitter=config.dataset.color_jitter,
          start_step=step - epoch * steps_per_epoch,
        )  # mid-epoch resume
        for batch in ds.as_numpy_iterator():
          state, opt_state, metrics = p_train_step(
            state, opt_state, sharding.put_batch(_model_inputs(batch), data_sharding)
          )
          step += 1
          guard.push(step, metrics)  # checks the previous step's (already computed) metrics: no pipeline stall
          pending.append(metrics)
          report(step)
          if step % log_every == 0 or step == total_steps:
            _log_train(
              writer,
              pending,
              step,
              schedule,
              t_log,
              steps_at_log,
              config.batch_size,
              tag,
              epoch,
              settings.epochs,
              steps_per_epoch,
              total_steps,
            )
            pending, t_log, steps_at_log = [], time.time(), step
          if stop.step_done(step):
            guard.check_all()
            ckpt.save(step, state, opt_state)
            ckpt.wait()
            raise Preempted(
              f"{tag}: stopped at step {step}; checkpoint saved in {ckpt.checkpoint_dir(step)}; "
              "rerun the same command to resume"
            )
      guard.check_all()
      ckpt.save(step, state, opt_state)  # before evaluating: a failing evaluation loses no training
      due = (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == settings.epochs
      if due and not any(h["epoch"] == epoch + 1 for h in history):
        t0 = time.time()
        result = evaluate(p_eval_step, state, test_data, root=root, config=config, mesh=mesh)
        _write_eval(writer, step, result)
        logging.info(
          "%s epoch %d/%d: test mean F1 %.2f%%, mean accuracy %.2f%%, L_WA %.4f (%.1f s)",
          tag,
          epoch + 1,
          settings.epochs,
          100 * result["mean_f1"],
          100 * result["mean_accuracy"],
          result["loss"],
          time.time() - t0,
        )
        history.append({"epoch": epoch + 1, "step": step, **result})
        _write_history(stage_dir, history)
        ckpt.save_best(step, state, {"mean_f1": result["mean_f1"]})
    ckpt.wait()
    best_step = ckpt.best_step()
  finally:
    writer.flush()
    ckpt.close()
  if not history:
    raise RuntimeError(f"{stage_dir}: finished without an evaluation; delete the folder and train again")
  # The epoch whose model best/ holds (ties in mean F1 resolved as orbax resolved them).
  best = next((h for h in history if h["step"] == best_step), max(history, key=lambda h: h["mean_f1"]))
  return {
    "stage": stage,
    "fold": fold,
    "steps": step,
    "epochs": settings.epochs,
    "last": history[-1],
    "best": best,
    "init": checkpointing.read_stage_config(stage_dir).get("init", ""),
    "history": [{k: h[k] for k in ("epoch", "step", "mean_f1", "loss")} for h in history],
  }


class _FiniteGuard:
  """Stops at the first non-finite loss, gradient norm or model state, naming the step and the value.

  Each step's metrics are read one step late (while the next step runs), and every pending step is
  checked before a checkpoint is written, so nothing non-finite is ever saved.
  """

  def __init__(self, tag: str, stage: int, learning_rate: float, steps_per_epoch: int, schedule, ckpt):
    self.tag, self.stage, self.learning_rate = tag, stage, learning_rate
    self.steps_per_epoch, self.schedule, self.ckpt = steps_per_epoch, schedule, ckpt
    self._last: tuple[int, dict[str, jax.Array]] | None = None

  def push(self, step: int, metrics: dict[str, jax.Array]) -> None:
    if self._last is not None:
      self._check(*self._last)
    self._last = (step, metrics)

  def check_all(self) -> None:
    if self._last is not None:
      self._check(*self._last)
      self._last = None

  def _check(self, step: int, metrics: dict[str, jax.Array]) -> None:
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if all(np.isfinite(v) for v in values.values()):
      return
    saved = self.ckpt.latest_step()
    parts = ", ".join(f"{k} {v:.6g}" for k, v in values.items())
    epoch, batch = (step - 1) // self.steps_per_epoch + 1, (step - 1) % self.steps_per_epoch + 1
    raise TrainingDiverged(
      f"{self.tag}: non-finite values at step {step} (epoch {epoch}, batch {batch}): {parts} (finite_state 0 = "
      f"a parameter or BatchNorm statistic is inf/NaN); lr at that step {float(self.schedule(step - 1)):.3g}. "
      f"Nothing was saved after step {saved if saved is not None else 0}. Hint: lower "
      f"stage{self.stage}.learning_rate (now {self.learning_rate:g}) or set optim.clip_norm, in a new --workdir "
      "(a changed config does not resume), and check the input images."
    )


def _log_train(
  writer, pending, step, schedule, t_log, steps_at_log, global_batch, tag, epoch, epochs, steps_per_epoch, total_steps
) -> None:
  """Writes the mean of the buffered step metrics, the lr and the throughput (blocks on the last step)."""
  means = {k: float(np.mean(v)) for k, v in jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *pending)).items()}
  elapsed = max(time.time() - t_log, 1e-9)
  img_s = (step - steps_at_log) * global_batch / elapsed
  lr = float(schedule(step - 1))  # the lr used by the last step
  writer.write_scalars(step, {**{f"train/{k}": v for k, v in means.items()}, "train/lr": lr, "train/img_per_s": img_s})
  parts = " ".join(f"{k} {means[k]:.4f}" for k in ("total", "wa", "edge") if k in means)
  logging.info(
    "%s epoch %d/%d step %d/%d (batch %d/%d): %s lr %.3g %.1f img/s",
    tag,
    epoch + 1,
    epochs,
    step,
    total_steps,
    step - epoch * steps_per_epoch,
    steps_per_epoch,
    parts,
    lr,
    img_s,
  )


def _class_weights(config, root: str, fold: int, train_data) -> np.ndarray:
  dataset = datasets.Dataset(root, config.dataset.name, task.au_names(config.dataset))
  return dataset.class_weights(fold, config.optim.class_weights, train_data)


# ----------------------------------------------------------------------------- modes


def _stage_dir(workdir: str, fold: int, stage: int) -> str:
  return os.path.join(workdir, f"fold{fold}", f"stage{stage}")


# Config keys that change how a run is executed or reported, not the experiment: a resume may change them.
RUN_KEYS = (
  "mode",
  "checkpoint",
  "init_from",
  "keep_checkpoints",
  "eval_every_epochs",
  "log_every_steps",
  "stop_after_steps",
  "eval_batch_size",
  "dataset.root",
  "dataset.fold",
  "dataset.folds",
  "dataset.synthetic.cache_dir",
  "sharding",
  "model.remat",
  "model.imagenet_weights",
)


def experiment_config(config: ml_collections.ConfigDict, stage: int) -> dict[str, Any]:
  """The config of ``stage`` without RUN_KEYS and the other stage's settings: what a resume must keep."""
  out = config.to_dict()
  for key in RUN_KEYS + (("stage2",) if stage == 1 else ("stage1",)):
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
      node = node.get(p, {})
    node.pop(leaf, None)
  return out


def _stage2_init(config, workdir: str, fold: int, train_data) -> str:
  """Stage 1 of this fold in ``workdir`` that a fresh stage 2 starts from: its last checkpoint, or its best."""
  stage1_dir = _stage_dir(workdir, fold, 1)
  if config.stage2.init not in ("last", "best", "none"):
    raise ConfigError(f"config key 'stage2.init' = {config.stage2.init!r}; choose 'last', 'best' or 'none'")
  done = config.stage1.epochs * input_pipeline.num_train_steps_per_epoch(len(train_data.paths), config.batch_size)
  latest = checkpointing.latest_step(stage1_dir)
  if latest is None:
    raise ConfigError(
      f"stage 2 of fold {fold} starts from stage 1, but {stage1_dir} holds no stage-1 checkpoint: "
      "train stage 1 first (--config.mode=train or stage1 with this --workdir), or name the "
      "weights to start from with --config.init_from=<stage-1 dir or official .pth>"
    )
  if latest < done:
    raise ConfigError(
      f"stage 1 in {stage1_dir} stopped at step {latest} of {done}: finish it first (rerun with "
      "--config.mode=stage1 or train), or start stage 2 from other weights with --config.init_from"
    )
  return os.path.join(stage1_dir, "checkpoints" if config.stage2.init == "last" else "best")


def run_fold(config, workdir: str, fold: int, stages: tuple[int, ...], stop: StopRequest) -> dict[str, Any]:
  """Trains ``stages`` of one fold; a fresh stage 2 starts from stage 1 of the same workdir (``stage2.init``)."""
  dataset = datasets.from_config(config, workdir)
  dataset.check([fold])
  root = dataset.root
  train_data, test_data = dataset.split(fold, "train"), dataset.split(fold, "test")
  baseline = reporting.all_positive_f1(np.asarray(test_data.labels))
  out: dict[str, Any] = {
    "fold": fold,
    "dataset_root": root,
    "num_train": len(train_data.paths),
    "num_test": len(test_data.paths),
    "all_positive_f1": dict(zip(dataset.au_names, baseline.tolist())),
    "all_positive_mean_f1": float(np.mean(baseline)),
  }
  for i, stage in enumerate(stages):
    stage_dir = _stage_dir(workdir, fold, stage)
    init = config.init_from if i == 0 and config.init_from else None
    if stage == 2 and init is None and not checkpointing.has_checkpoints(stage_dir):
      init = _stage2_init(config, workdir, fold, train_data) if config.stage2.init != "none" else None
    out[f"stage{stage}"] = train_stage(
      config,
      stage_dir,
      stage=stage,
      fold=fold,
      root=root,
      train_data=train_data,
      test_data=test_data,
      stop=stop,
      init_from=init,
    )
  return out


def evaluate_checkpoint(config, workdir: str) -> dict[str, Any]:
  """Mode 'eval': ``config.checkpoint`` on the test split of ``config.dataset.fold``."""
  if not config.checkpoint:
    raise ConfigError("mode 'eval' needs --config.checkpoint=<stage dir, best/ dir, convert dir or official .pth>")
  if not os.path.exists(os.path.expanduser(config.checkpoint)):
    raise CheckpointError(f"config key 'checkpoint' = {config.checkpoint!r}: no such file or folder")
  fold = config.dataset.fold
  dataset = datasets.from_config(config, workdir)
  dataset.check([fold])
  root = dataset.root
  num_aus, au_names = initialization.checkpoint_aus(config.checkpoint)
  want = list(dataset.au_names)
  if (num_aus is not None and num_aus != len(want)) or (au_names is not None and list(au_names) != want):
    names = f" ({', '.join(au_names)})" if au_names else ""
    raise CheckpointError(
      f"{config.checkpoint}: a model of {num_aus} AUs{names}, but "
      f"dataset {config.dataset.name!r} has {len(want)} ({', '.join(want)}); evaluate it on the dataset it was "
      "trained for (e.g. --config=configs/bp4d_resnet50.py for 12 BP4D AUs, configs/disfa_resnet50.py for 8 "
      "DISFA AUs)"
    )
  train_data, test_data = dataset.split(fold, "train"), dataset.split(fold, "test")
  model = initialization.load_for_config(config.checkpoint, config)
  model.eval()
  graphdef, state = nnx.split(model)
  mesh = sharding.make_mesh()
  class_weights = jnp.asarray(_class_weights(config, root, fold, train_data))
  state = sharding.put_replicated(state, mesh)
  result = evaluate(jit_eval_step(graphdef, class_weights, mesh), state, test_data, root=root, config=config, mesh=mesh)
  stage = 2 if isinstance(model, Stage2Model) else 1
  baseline = reporting.all_positive_f1(np.asarray(test_data.labels))
  return {
    "fold": fold,
    "checkpoint": config.checkpoint,
    "dataset_root": root,
    "num_test": len(test_data.paths),
    f"stage{stage}": {"stage": stage, "last": result, "best": result},
    "all_positive_f1": dict(zip(dataset.au_names, baseline.tolist())),
    "all_positive_mean_f1": float(np.mean(baseline)),
  }


def _from_best(r: dict[str, Any]) -> bool:
  return os.path.basename(str(r.get("init", "")).rstrip("/")) == "best"


def results_table(config, folds: dict[str, dict[str, Any]]) -> str:
  """Markdown F1 table (paper's Tables 1-2 layout): per fold and stage, averages over folds, baseline.

  Rows chosen with the test fold (a stage's best epoch, a stage 2 started from stage 1's best) say so.
  """
  names = task.au_names(config.dataset)
  selected = " (selected on the test fold)"
  rows = []
  for k, fr in folds.items():
    for s in (1, 2):
      r = fr.get(f"stage{s}")
      if r is None:
        continue
      if config.mode == "eval":
        rows.append((f"stage {s}, fold {k} ({os.path.basename(config.checkpoint.rstrip('/'))})", r["last"]["f1"]))
        continue
      origin = ", from stage 1's best epoch" + selected if s == 2 and _from_best(r) else ""
      rows.append((f"stage {s}, fold {k}, last epoch ({r['last']['epoch']}){origin}", r["last"]["f1"]))
      rows.append((f"stage {s}, fold {k}, best epoch ({r['best']['epoch']}){origin or selected}", r["best"]["f1"]))
    rows.append((f"all-positive baseline, fold {k}", fr["all_positive_f1"]))
  if len(folds) > 1:
    for s in (1, 2):
      for which in ("last", "best"):
        rs = [fr[f"stage{s}"] for fr in folds.values() if f"stage{s}" in fr]
        if len(rs) == len(folds):
          note = selected if which == "best" or (s == 2 and any(_from_best(r) for r in rs)) else ""
          rows.append(
            (
              f"stage {s}, {which} epoch, avg. over {len(folds)} folds{note}",
              reporting.mean_f1_dicts([r[which]["f1"] for r in rs]),
            )
          )
    rows.append(
      (
        f"all-positive baseline, avg. over {len(folds)} folds",
        reporting.mean_f1_dicts([fr["all_positive_f1"] for fr in folds.values()]),
      )
    )
  return reporting.f1_table(rows, names)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs ``config.mode``; returns the results and writes them to ``workdir``.

  Training modes write results.json / results.md and hold the workdir's lock; mode 'eval' writes
  results_eval.json / results_eval.md beside them. A stop request returns ``{"preempted": True, ...}``.
  """
  if config.mode not in MODES:
    raise ConfigError(f"config key 'mode' = {config.mode!r}; choose one of {MODES}")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  reporting.quiet_library_logs()
  t0 = time.time()
  stop = StopRequest(config.stop_after_steps).install()
  try:
    if config.mode == "eval":
      folds = {str(config.dataset.fold): evaluate_checkpoint(config, workdir)}
    else:
      stages = {"train": (1, 2), "folds": (1, 2), "stage1": (1,), "stage2": (2,)}[config.mode]
      if config.model.head == "baseline":
        stages = (1,)  # one model, no graph stage (ModelSpec.from_config rejects mode 'stage2')
        if config.mode == "stage2":
          model_factory.ModelSpec.from_config(config, 2)
      fold_list = list(config.dataset.folds) if config.mode == "folds" else [config.dataset.fold]
      with checkpointing.WorkdirLock(workdir):
        folds = {str(k): run_fold(config, workdir, k, stages, stop) for k in fold_list}
  except Preempted as e:
    logging.warning("%s", e)
    return {"preempted": True, "message": str(e)}
  finally:
    stop.uninstall()
  table = results_table(config, folds)
  results = {
    "mode": config.mode,
    "workdir": workdir,
    "wall_time_s": time.time() - t0,
    "folds": folds,
    "config": config.to_dict(),
  }
  if jax.process_index() == 0:
    name = "results_eval" if config.mode == "eval" else "results"
    reporting.write_results(workdir, results, f"# F1 (%) on the test split\n\n{table}", name=name)
    print(table, flush=True)
  return results
