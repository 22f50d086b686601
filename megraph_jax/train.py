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

from megraph_jax import checkpointing, datasets, initialization, losses, optim, reporting, sharding
from megraph_jax.metrics import AUMetrics, confusion_counts
from megraph_jax.models.megraph import Stage2Model
from megraph_jax.preemption import Preempted, StopRequest

MODES = ("train", "stage1", "stage2", "eval", "folds")


# ----------------------------------------------------------------------------- pure steps


def loss_terms(out: dict[str, jax.Array], batch: dict[str, jax.Array], class_weights: jax.Array, lam: float,
               mask: jax.Array | None = None) -> dict[str, jax.Array]:
  """L_WA (stage 1) or L_WA + lam L_E (stage 2, Eq. 8) of one batch."""
  wa = losses.weighted_asymmetric_loss(out["au_probs"], batch["label"], class_weights, mask=mask)
  if "edge_logits" not in out:
    return {"wa": wa, "total": wa}
  relations = batch["relation"] if "relation" in batch else losses.relation_labels(batch["label"])
  edge = losses.edge_loss(out["edge_logits"], relations, mask=mask)
  return {"wa": wa, "edge": edge, "total": losses.total_loss(wa, edge, lam)}


def train_step(graphdef: nnx.GraphDef, state: nnx.State, opt_state: Any, batch: dict[str, jax.Array], *,
               tx: optax.GradientTransformation, class_weights: jax.Array, lam: float
               ) -> tuple[nnx.State, Any, dict[str, jax.Array]]:
  """One AdamW step on a global batch; BatchNorm statistics and DropPath RNG advance inside ``state``."""
  model = nnx.merge(graphdef, state)

  def loss_fn(m):
    terms = loss_terms(m(batch["image"]), batch, class_weights, lam)  # [B, H, W, 3] -> scalars
    return terms["total"], terms

  grads, terms = nnx.grad(loss_fn, has_aux=True)(model)  # d/d nnx.Param; batch stats update in place
  params = nnx.state(model, nnx.Param)
  updates, opt_state = tx.update(grads, opt_state, params)
  nnx.update(model, optax.apply_updates(params, updates))
  return nnx.state(model), opt_state, {**terms, "grad_norm": optax.tree.norm(grads)}


def eval_step(graphdef: nnx.GraphDef, state: nnx.State, batch: dict[str, jax.Array], *,
              class_weights: jax.Array) -> dict[str, jax.Array]:
  """Confusion counts ``[N, 4]`` and the summed L_WA of the real (mask = 1) examples of a padded batch."""
  out = nnx.merge(graphdef, state)(batch["image"])
  mask = batch["mask"]
  n = jnp.sum(mask.astype(jnp.float32))
  wa = losses.weighted_asymmetric_loss(out["au_probs"], batch["label"], class_weights, mask=mask)
  return {"counts": confusion_counts(out["au_probs"], batch["label"], mask), "wa_sum": wa * n, "n": n}


def jit_train_step(graphdef, tx, class_weights, lam, mesh, state_sharding=None, opt_sharding=None):
  """``train_step`` jitted once: state/opt state as given (default replicated), batch split on 'data'."""
  repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
  state_sharding = repl if state_sharding is None else state_sharding
  opt_sharding = repl if opt_sharding is None else opt_sharding
  fn = functools.partial(train_step, graphdef, tx=tx, class_weights=class_weights, lam=lam)
  donate = (0, 1) if jax.default_backend() != "cpu" else ()
  return jax.jit(fn, in_shardings=(state_sharding, opt_sharding, data),
                 out_shardings=(state_sharding, opt_sharding, repl), donate_argnums=donate)


def jit_eval_step(graphdef, class_weights, mesh, state_sharding=None):
  """``eval_step`` jitted once with explicit shardings."""
  repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
  state_sharding = repl if state_sharding is None else state_sharding
  fn = functools.partial(eval_step, graphdef, class_weights=class_weights)
  return jax.jit(fn, in_shardings=(state_sharding, data), out_shardings=repl)


# ----------------------------------------------------------------------------- evaluation


def evaluate(p_eval_step, state, data, *, root: str, config: ml_collections.ConfigDict, mesh) -> dict[str, Any]:
  """Per-AU F1/accuracy, their means and the L_WA of ``state`` on ``data`` (all examples, padded batches)."""
  from data_pipelines import input_pipeline  # pylint: disable=import-outside-toplevel
  batch = _eval_batch_size(config, mesh)
  ds = input_pipeline.create_eval_dataset(
      data, root=root, batch_size=batch // jax.process_count(), image_size=config.dataset.image_size,
      crop_size=config.dataset.crop_size, process_index=jax.process_index(), process_count=jax.process_count())
  data_sharding = sharding.data_sharded(mesh)
  totals = None
  for b in ds.as_numpy_iterator():
    out = p_eval_step(state, sharding.put_batch(_model_inputs(b), data_sharding))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  result = AUMetrics(tuple(config.dataset.au_names)).update(totals["counts"], int(round(float(totals["n"])))).compute()
  result["loss"] = float(totals["wa_sum"] / max(totals["n"], 1.0))
  return result


def _eval_batch_size(config, mesh) -> int:
  n = mesh.devices.size
  return -(-config.eval_batch_size // n) * n  # rounded up to a multiple of the devices


def _model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: batch[k] for k in ("image", "label", "relation", "mask") if k in batch}


# ----------------------------------------------------------------------------- one stage


def _write_eval(writer, step: int, metrics: dict[str, Any]) -> None:
  scalars = {"eval/mean_f1": metrics["mean_f1"], "eval/mean_accuracy": metrics["mean_accuracy"],
             "eval/loss_wa": metrics["loss"]}
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


def train_stage(config: ml_collections.ConfigDict, stage_dir: str, *, stage: int, fold: int, root: str,
                train_data, test_data, stop: StopRequest, init_from: str | None = None) -> dict[str, Any]:
  """Trains (or resumes) one stage in ``stage_dir``; returns the last and best evaluation results."""
  from data_pipelines import input_pipeline  # pylint: disable=import-outside-toplevel
  settings = _stage_settings(config, stage)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  steps_per_epoch = input_pipeline.num_train_steps_per_epoch(len(train_data.paths), config.batch_size)
  if steps_per_epoch < 1:
    raise ValueError(f"config key 'batch_size' = {config.batch_size} exceeds the {len(train_data.paths)} "
                     f"training images of fold {fold}; lower it")
  total_steps = settings.epochs * steps_per_epoch

  model = initialization.build_model(config, stage)
  ckpt = checkpointing.StageCheckpoints(stage_dir, keep=config.keep_checkpoints)
  if ckpt.latest_step() is None:  # a fresh start: initial weights
    if init_from:
      logging.info("stage %d: initialising from %s", stage, init_from)
      initialization.copy_weights(model, initialization.load_pretrained(init_from, config))
    elif config.model.imagenet_weights:
      initialization.init_backbone_from_imagenet(model, config.model.imagenet_weights)
  checkpointing.write_model_json(stage_dir, initialization.model_json(config, stage))

  model.eval()
  eval_graphdef = nnx.graphdef(model)
  model.train()
  graphdef, state = nnx.split(model)
  tx, schedule = optim.create_optimizer(
      nnx.state(model, nnx.Param), learning_rate=settings.learning_rate, total_steps=total_steps,
      weight_decay=config.optim.weight_decay, b1=config.optim.b1, b2=config.optim.b2, eps=config.optim.eps,
      clip_norm=config.optim.clip_norm, trainable_params=settings.trainable_params,
      decay_params=settings.decay_params, stage_key=f"stage{stage}")
  opt_state = tx.init(nnx.state(model, nnx.Param))
  step = 0
  restored = ckpt.restore(state, opt_state)
  if restored is not None:
    step, state, opt_state = restored
    logging.info("stage %d: resuming from step %d (epoch %d, batch %d) in %s", stage, step,
                 step // steps_per_epoch, step % steps_per_epoch, ckpt.latest.directory)
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
  report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                           every_steps=config.log_every_steps)
  history = _read_history(stage_dir, step)
  log_every = max(int(config.log_every_steps), 1)
  pending, t_log, steps_at_log = [], time.time(), step
  tag = f"fold {fold} stage {stage}"
  try:
    for epoch in range(step // steps_per_epoch, settings.epochs):
      ds = input_pipeline.create_train_dataset(
          train_data, root=root, batch_size=config.batch_size // jax.process_count(),
          image_size=config.dataset.image_size, crop_size=config.dataset.crop_size, seed=config.seed, epoch=epoch,
          process_index=jax.process_index(), process_count=jax.process_count(),
          color_jitter=config.dataset.color_jitter, start_step=step - epoch * steps_per_epoch)  # mid-epoch resume
      for batch in ds.as_numpy_iterator():
        state, opt_state, metrics = p_train_step(state, opt_state, sharding.put_batch(_model_inputs(batch),
                                                                                      data_sharding))
        step += 1
        pending.append(metrics)
        report(step)
        if step % log_every == 0 or step == total_steps:
          _log_train(writer, pending, step, schedule, t_log, steps_at_log, config.batch_size, tag, epoch,
                     settings.epochs, steps_per_epoch, total_steps)
          pending, t_log, steps_at_log = [], time.time(), step
        if stop.step_done(step):
          ckpt.save(step, state, opt_state)
          ckpt.wait()
          raise Preempted(f"{tag}: stopped at step {step}; checkpoint saved in {ckpt.latest.directory}; "
                          "rerun the same command to resume")
      if (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == settings.epochs:
        t0 = time.time()
        result = evaluate(p_eval_step, state, test_data, root=root, config=config, mesh=mesh)
        _write_eval(writer, step, result)
        logging.info("%s epoch %d/%d: test mean F1 %.2f%%, mean accuracy %.2f%%, L_WA %.4f (%.1f s)", tag,
                     epoch + 1, settings.epochs, 100 * result["mean_f1"], 100 * result["mean_accuracy"],
                     result["loss"], time.time() - t0)
        history.append({"epoch": epoch + 1, "step": step, **result})
        _write_history(stage_dir, history)
        ckpt.save_best(step, state, {"mean_f1": result["mean_f1"]})
      ckpt.save(step, state, opt_state)
    ckpt.wait()
  finally:
    writer.flush()
    ckpt.close()
  if not history:
    raise RuntimeError(f"{stage_dir}: finished without an evaluation; delete the folder and train again")
  best = max(history, key=lambda h: h["mean_f1"])
  return {"stage": stage, "fold": fold, "steps": step, "epochs": settings.epochs, "last": history[-1],
          "best": best, "history": [{k: h[k] for k in ("epoch", "step", "mean_f1", "loss")} for h in history]}


def _log_train(writer, pending, step, schedule, t_log, steps_at_log, global_batch, tag, epoch, epochs,
               steps_per_epoch, total_steps) -> None:
  """Writes the mean of the buffered step metrics, the lr and the throughput (blocks on the last step)."""
  means = {k: float(np.mean(v)) for k, v in jax.device_get(
      jax.tree.map(lambda *xs: jnp.stack(xs), *pending)).items()}
  elapsed = max(time.time() - t_log, 1e-9)
  img_s = (step - steps_at_log) * global_batch / elapsed
  lr = float(schedule(step - 1))  # the lr used by the last step
  writer.write_scalars(step, {**{f"train/{k}": v for k, v in means.items()}, "train/lr": lr,
                              "train/img_per_s": img_s})
  parts = " ".join(f"{k} {means[k]:.4f}" for k in ("total", "wa", "edge") if k in means)
  logging.info("%s epoch %d/%d step %d/%d (batch %d/%d): %s lr %.3g %.1f img/s", tag, epoch + 1, epochs, step,
               total_steps, step - epoch * steps_per_epoch, steps_per_epoch, parts, lr, img_s)


def _class_weights(config, root: str, fold: int, train_data) -> np.ndarray:
  if config.optim.class_weights == "labels":
    return losses.class_weights(np.asarray(train_data.labels))
  if config.optim.class_weights == "file":
    path = os.path.join(root, "list", f"{config.dataset.name}_weight_fold{fold}.txt")
    return np.loadtxt(path, dtype=np.float32).reshape(-1)
  raise ValueError(f"config key 'optim.class_weights' = {config.optim.class_weights!r}; use 'labels' or 'file'")


# ----------------------------------------------------------------------------- modes


def _stage_dir(workdir: str, fold: int, stage: int) -> str:
  return os.path.join(workdir, f"fold{fold}", f"stage{stage}")


def run_fold(config, workdir: str, fold: int, stages: tuple[int, ...], stop: StopRequest) -> dict[str, Any]:
  """Trains ``stages`` of one fold; stage 2 after stage 1 starts from stage 1's best checkpoint."""
  root = datasets.dataset_root(config, workdir)
  datasets.check_dataset(root, config.dataset.name, [fold])
  train_data = datasets.load_split(root, config, fold, "train")
  test_data = datasets.load_split(root, config, fold, "test")
  baseline = reporting.all_positive_f1(np.asarray(test_data.labels))
  out: dict[str, Any] = {"fold": fold, "dataset_root": root, "num_train": len(train_data.paths),
                         "num_test": len(test_data.paths),
                         "all_positive_f1": dict(zip(config.dataset.au_names, baseline.tolist())),
                         "all_positive_mean_f1": float(np.mean(baseline))}
  for i, stage in enumerate(stages):
    init = config.init_from if i == 0 and config.init_from else None
    if stage == 2 and init is None:
      stage1_dir = _stage_dir(workdir, fold, 1)
      if os.path.isdir(os.path.join(stage1_dir, "best")):
        init = stage1_dir
      else:
        logging.warning("stage 2 of fold %d: no stage-1 checkpoint in %s and no config.init_from; "
                        "starting from %s", fold, stage1_dir,
                        "ImageNet weights" if config.model.imagenet_weights else "a random initialisation")
    out[f"stage{stage}"] = train_stage(config, _stage_dir(workdir, fold, stage), stage=stage, fold=fold, root=root,
                                       train_data=train_data, test_data=test_data, stop=stop, init_from=init)
  return out


def evaluate_checkpoint(config, workdir: str) -> dict[str, Any]:
  """Mode 'eval': ``config.checkpoint`` on the test split of ``config.dataset.fold``."""
  if not config.checkpoint:
    raise ValueError("mode 'eval' needs --config.checkpoint=<stage dir, best/ dir, convert dir or official .pth>")
  fold = config.dataset.fold
  root = datasets.dataset_root(config, workdir)
  datasets.check_dataset(root, config.dataset.name, [fold])
  train_data = datasets.load_split(root, config, fold, "train")
  test_data = datasets.load_split(root, config, fold, "test")
  model = initialization.load_pretrained(config.checkpoint, config)
  model.eval()
  graphdef, state = nnx.split(model)
  mesh = sharding.make_mesh()
  class_weights = jnp.asarray(_class_weights(config, root, fold, train_data))
  state = sharding.put_replicated(state, mesh)
  result = evaluate(jit_eval_step(graphdef, class_weights, mesh), state, test_data, root=root, config=config,
                    mesh=mesh)
  stage = 2 if isinstance(model, Stage2Model) else 1
  baseline = reporting.all_positive_f1(np.asarray(test_data.labels))
  return {"fold": fold, "checkpoint": config.checkpoint, "dataset_root": root, "num_test": len(test_data.paths),
          f"stage{stage}": {"stage": stage, "last": result, "best": result},
          "all_positive_f1": dict(zip(config.dataset.au_names, baseline.tolist())),
          "all_positive_mean_f1": float(np.mean(baseline))}


def results_table(config, folds: dict[str, dict[str, Any]]) -> str:
  """Markdown F1 table (paper's Tables 1-2 layout): per fold and stage, averages over folds, baseline."""
  names = tuple(config.dataset.au_names)
  rows = []
  for k, fr in folds.items():
    for s in (1, 2):
      r = fr.get(f"stage{s}")
      if r is None:
        continue
      if config.mode == "eval":
        rows.append((f"stage {s}, fold {k} ({os.path.basename(config.checkpoint.rstrip('/'))})", r["last"]["f1"]))
        continue
      rows.append((f"stage {s}, fold {k}, last epoch ({r['last']['epoch']})", r["last"]["f1"]))
      rows.append((f"stage {s}, fold {k}, best epoch ({r['best']['epoch']})", r["best"]["f1"]))
    rows.append((f"all-positive baseline, fold {k}", fr["all_positive_f1"]))
  if len(folds) > 1:
    for s in (1, 2):
      for which in ("last", "best"):
        f1s = [fr[f"stage{s}"][which]["f1"] for fr in folds.values() if f"stage{s}" in fr]
        if len(f1s) == len(folds):
          rows.append((f"stage {s}, {which} epoch, avg. over {len(folds)} folds", reporting.mean_f1_dicts(f1s)))
    rows.append((f"all-positive baseline, avg. over {len(folds)} folds",
                 reporting.mean_f1_dicts([fr["all_positive_f1"] for fr in folds.values()])))
  return reporting.f1_table(rows, names)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs ``config.mode``; writes results.json and results.md to ``workdir`` and returns the results."""
  if config.mode not in MODES:
    raise ValueError(f"config key 'mode' = {config.mode!r}; choose one of {MODES}")
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
        stages = (1,)  # one model, no graph stage (model_json rejects mode 'stage2')
        if config.mode == "stage2":
          initialization.model_json(config, 2)
      fold_list = list(config.dataset.folds) if config.mode == "folds" else [config.dataset.fold]
      folds = {str(k): run_fold(config, workdir, k, stages, stop) for k in fold_list}
  except Preempted as e:
    logging.warning("%s", e)
    return {"preempted": True, "message": str(e)}
  finally:
    stop.uninstall()
  table = results_table(config, folds)
  results = {"mode": config.mode, "workdir": workdir, "wall_time_s": time.time() - t0, "folds": folds,
             "config": config.to_dict()}
  if jax.process_index() == 0:
    reporting.write_results(workdir, results, f"# F1 (%) on the test split\n\n{table}")
    print(table, flush=True)
  return results
