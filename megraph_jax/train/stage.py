"""Training one stage of ME-GraphAU: the train state, the pure jitted steps, evaluation and the epoch loop.

The run modes (folds, stages, evaluating a checkpoint) are in ``megraph_jax.train.experiment``."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from megraph_jax import checkpointing, model_factory, numerics, sharding, stage_dirs, task
from megraph_jax.data import device_augment, input_pipeline
from megraph_jax.data.datasets import FoldData, SplitData
from megraph_jax.errors import ConfigError
from megraph_jax.metrics import AUMetrics, confusion_counts
from megraph_jax.train import initialization, monitoring, optim, step_cache
from megraph_jax.train.preemption import Preempted, StopRequest
from megraph_jax.train.results import EvalResult, StageResult
from megraph_jax.train.train_state import TrainState

if TYPE_CHECKING:  # types only: the GPU image (no ml_collections, no clu) imports the steps of this module
  import ml_collections
  from clu import metric_writers

# ----------------------------------------------------------------------------- the train state


def optimizer_settings(config: ml_collections.ConfigDict, stage: int) -> dict[str, Any]:
  """``optim.create_optimizer``'s arguments of ``stage`` (AdamW, the stage's lr and masks) but the parameters and
  the number of steps."""
  settings = _stage_settings(config, stage)
  return {
    "learning_rate": settings.learning_rate,
    "weight_decay": config.optim.weight_decay,
    "b1": config.optim.b1,
    "b2": config.optim.b2,
    "eps": config.optim.eps,
    "clip_norm": config.optim.clip_norm,
    "trainable_params": settings.trainable_params,
    "decay_params": settings.decay_params,
    "stage_key": f"stage{stage}",
  }


def make_optimizer(config: ml_collections.ConfigDict, stage: int, params: Any, total_steps: int):
  """(AdamW with the stage's masks and cosine lr over ``total_steps``, its lr schedule) for ``params``."""
  return optim.create_optimizer(params, total_steps=total_steps, **optimizer_settings(config, stage))


def eval_graphdef(model: nnx.Module) -> nnx.GraphDef:
  """The graph of ``model``'s eval view (running BatchNorm statistics, no DropPath); same state as the model."""
  return nnx.graphdef(model_factory.eval_view(model))


# ----------------------------------------------------------------------------- pure steps


def train_step(
  graphdef: nnx.GraphDef,
  state: nnx.State,
  batch: dict[str, jax.Array],
  *,
  class_weights: jax.Array,
  lam: float,
  wa_loss: str = "megraph",
  sam_rho: float = 0.0,
  sam_adaptive: bool = True,
) -> tuple[nnx.State, dict[str, jax.Array]]:
  """One AdamW step of a ``TrainState`` on a global batch; BatchNorm statistics and DropPath RNG advance too.

  With ``sam_rho`` > 0 (OpenGraphAU's SAM): the gradient is taken again at w + e(w) (``optim.sam_perturbation``),
  that pass leaving the BatchNorm running statistics as the first set them, and AdamW steps from w with it.
  """
  ts = nnx.merge(graphdef, state)
  images = device_augment.model_images(batch["image"], batch.get("jitter"))  # uint8 pixels: jitter, normalise

  def loss_fn(m):
    terms = task.loss_terms(m(images), batch, class_weights, lam, wa_loss=wa_loss)  # [B, H, W, 3] -> scalars
    return terms["total"], terms

  grads, terms = nnx.grad(loss_fn, has_aux=True)(ts.model)  # d/d nnx.Param; batch stats update in place
  if sam_rho > 0:
    w = nnx.as_pure(nnx.state(ts.model, nnx.Param))
    stats = nnx.as_pure(nnx.state(ts.model, nnx.BatchStat))  # after the first pass
    e = optim.sam_perturbation(w, nnx.as_pure(grads), rho=sam_rho, adaptive=sam_adaptive)
    nnx.update(ts.model, jax.tree.map(jnp.add, w, e))  # climb to w + e(w)
    grads, _ = nnx.grad(loss_fn, has_aux=True)(ts.model)
    nnx.update(ts.model, w)  # back to w
    nnx.update(ts.model, stats)  # official second pass: BatchNorm momentum 0
  ts.optimizer.update(ts.model, grads)
  variables = jax.tree.leaves(nnx.state(ts.model, nnx.Param, nnx.BatchStat))
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in variables]))  # 0 if a weight or statistic is inf/NaN
  metrics = {**terms, "grad_norm": optax.tree.norm(grads), "finite_state": finite.astype(jnp.float32)}
  return nnx.state(ts), metrics


def eval_step(
  graphdef: nnx.GraphDef,
  state: nnx.State,
  batch: dict[str, jax.Array],
  *,
  class_weights: jax.Array,
  wa_loss: str = "megraph",
) -> dict[str, jax.Array]:
  """Confusion counts ``[N, 4]`` and the summed L_WA of the real (mask = 1) examples of a padded batch."""
  out = nnx.merge(graphdef, state)(batch["image"])
  mask = batch["mask"]
  n = jnp.sum(mask.astype(jnp.float32))
  wa = task.loss_terms(out, {"label": batch["label"]}, class_weights, 0.0, mask, wa_loss=wa_loss)["wa"]
  return {"counts": confusion_counts(out["au_probs"], batch["label"], mask), "wa_sum": wa * n, "n": n}


def jit_train_step(
  graphdef,
  class_weights,
  lam,
  mesh,
  state_sharding=None,
  *,
  precision: str = "default",
  layout: str = "auto",
  donate: bool | None = None,
  **options,
):
  """``train_step`` jitted once (per process: equal arguments give the same jitted function, ``step_cache``): train
  state as given (default replicated), batch split on 'data'; traced with
  ``precision`` and ``layout`` for the mesh's platform (``megraph_jax.numerics``); the train state donated off
  CPU (``donate``: force); ``options``: its wa_loss / sam_rho / sam_adaptive (``step_options``)."""
  repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
  state_sharding = repl if state_sharding is None else state_sharding
  donate = numerics.platform_of(mesh) != "cpu" if donate is None else donate

  def build():
    fn = functools.partial(train_step, graphdef, class_weights=class_weights, lam=lam, **options)
    fn = numerics.traced_with(fn, precision=precision, layout=layout, platform=numerics.platform_of(mesh))
    return jax.jit(
      fn,
      in_shardings=(state_sharding, data),
      out_shardings=(state_sharding, repl),
      donate_argnums=(0,) if donate else (),
    )

  key = (graphdef, step_cache.array_key(class_weights), float(lam), mesh, step_cache.tree_key(state_sharding),
         precision, layout, donate, tuple(sorted(options.items())))  # fmt: skip
  return _TRAIN_STEPS.get(key, build)


_TRAIN_STEPS, _EVAL_STEPS = step_cache.KeyedCache(), step_cache.KeyedCache()  # jitted steps of this process's runs


def step_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config's options of the jitted steps: the L_WA of its head, SAM (0 = off), matmul precision, layouts."""
  numerics.check(config.model.precision, config.model.layout)
  return {
    "wa_loss": task.wa_loss_kind(config.model.head),
    "sam_rho": float(config.optim.sam_rho),
    "sam_adaptive": bool(config.optim.sam_adaptive),
    "precision": config.model.precision,
    "layout": config.model.layout,
  }


def jit_eval_step(
  graphdef,
  class_weights,
  mesh,
  state_sharding=None,
  wa_loss: str = "megraph",
  *,
  precision: str = "default",
  layout: str = "auto",
  **_train_only,
):
  """``eval_step`` jitted once (per process, as ``jit_train_step``) with explicit shardings (``state``: a model
  state, e.g. a train state's 'model'), traced with ``precision`` and ``layout`` for the mesh's platform; SAM
  options of ``step_options`` are ignored."""
  repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
  state_sharding = repl if state_sharding is None else state_sharding

  def build():
    fn = functools.partial(eval_step, graphdef, class_weights=class_weights, wa_loss=wa_loss)
    fn = numerics.traced_with(fn, precision=precision, layout=layout, platform=numerics.platform_of(mesh))
    return jax.jit(fn, in_shardings=(state_sharding, data), out_shardings=repl)

  key = (graphdef, step_cache.array_key(class_weights), mesh, step_cache.tree_key(state_sharding), wa_loss,
         precision, layout)  # fmt: skip
  return _EVAL_STEPS.get(key, build)


# ----------------------------------------------------------------------------- evaluation


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """What evaluation reads of the config, read once: the global batch (``eval_batch_size`` rounded up to a multiple
  of the mesh's devices), the image sizes, the AU names and the eval step's options (``step_options``)."""

  batch_size: int
  image_size: int
  crop_size: int
  au_names: tuple[str, ...]
  options: dict[str, Any]

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, mesh) -> EvalSettings:
    n = mesh.devices.size
    return cls(batch_size=-(-config.eval_batch_size // n) * n, image_size=config.dataset.image_size,
               crop_size=config.dataset.crop_size, au_names=tuple(task.au_names(config.dataset)),
               options=step_options(config))  # fmt: skip


def evaluate(
  p_eval_step,
  state,
  data: SplitData,
  *,
  config: ml_collections.ConfigDict | EvalSettings,
  mesh,
  root: str | None = None,
) -> EvalResult:
  """Per-AU F1/accuracy, their means and the L_WA of model ``state`` on ``data`` (all examples, padded batches);
  ``config``: the run's config or its :class:`EvalSettings`; images under ``root`` (default: the split's own)."""
  settings = config if isinstance(config, EvalSettings) else EvalSettings.from_config(config, mesh)
  ds = input_pipeline.create_eval_dataset(
    data,
    root=data.root if root is None else root,
    batch_size=settings.batch_size // jax.process_count(),
    image_size=settings.image_size,
    crop_size=settings.crop_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  data_sharding = sharding.data_sharded(mesh)
  totals = None
  for b in ds.as_numpy_iterator():
    out = p_eval_step(state, sharding.put_batch(_model_inputs(b), data_sharding))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  result = AUMetrics(settings.au_names).update(totals["counts"], int(round(float(totals["n"])))).compute()
  return EvalResult(**result, loss=float(totals["wa_sum"] / max(totals["n"], 1.0)))


def evaluator(
  graphdef: nnx.GraphDef, class_weights: Any, settings: EvalSettings, mesh, state_sharding=None
) -> Callable[[nnx.State, SplitData], EvalResult]:
  """The evaluation of a model graph, the stage loop's and mode 'eval''s: ``(model state, split) -> EvalResult``
  with the eval step jitted once (``jit_eval_step`` with the settings' step options)."""
  p_eval_step = jit_eval_step(graphdef, jnp.asarray(class_weights), mesh, state_sharding, **settings.options)
  p_eval_step = sharding.compile_then_meet(p_eval_step, "eval step")
  return functools.partial(evaluate, p_eval_step, config=settings, mesh=mesh)


def _model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: batch[k] for k in ("image", "label", "relation", "mask", "jitter") if k in batch}


# ----------------------------------------------------------------------------- one stage


def _stage_settings(config, stage: int) -> ml_collections.ConfigDict:
  return config.stage1 if stage == 1 else config.stage2


def train_stage(
  config: ml_collections.ConfigDict,
  stage_dir: str,
  *,
  stage: int,
  data: FoldData,
  stop: StopRequest,
  init_from: str | None = None,
) -> StageResult:
  """Trains (or resumes) one stage in ``stage_dir`` on ``data`` (the fold's splits and class weights); returns the
  last and best evaluation results.

  Nothing is written into ``stage_dir`` before a resume's config check and restore succeeded. Each epoch
  is checkpointed before it is evaluated, and evaluated exactly once (also when a stop landed on its
  last step). A non-finite loss, gradient or state stops training before anything non-finite is saved.
  """
  settings = _stage_settings(config, stage)
  train_data, test_data = data.train, data.test
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  steps_per_epoch = input_pipeline.num_train_steps_per_epoch(len(train_data.paths), config.batch_size)
  if steps_per_epoch < 1:
    raise ConfigError(
      f"config key 'batch_size' = {config.batch_size} exceeds the {len(train_data.paths)} "
      f"training images of fold {data.fold}; lower it"
    )
  total_steps = settings.epochs * steps_per_epoch
  tag = f"fold {data.fold} stage {stage}"
  options, eval_settings = step_options(config), EvalSettings.from_config(config, mesh)  # the config read here, once
  optimizer_kw = optimizer_settings(config, stage)

  stage_config = checkpointing.experiment_config(config, stage, (train_data, test_data))
  resuming = stage_dirs.has_checkpoints(stage_dir)
  if resuming:  # refuse a changed experiment before touching anything
    checkpointing.check_stage_config(stage_dir, stage_config)
  spec = model_factory.ModelSpec.from_config(config, stage)
  model = model_factory.build_from_config(config, stage, spec=spec)
  ckpt = checkpointing.StageCheckpoints(stage_dir, keep=config.keep_checkpoints)
  tx, schedule = optim.create_optimizer(nnx.state(model, nnx.Param), total_steps=total_steps, **optimizer_kw)
  ts = TrainState(model, tx)
  step = 0
  restored = ckpt.restore(nnx.state(ts)) if resuming else None
  if restored is None:  # a fresh start: initial weights, then the stage's config and model description
    source = initialization.init_stage_weights(model, config, init_from)
    logging.info("%s: initialised from %s", tag, source)
    checkpointing.write_stage_config(stage_dir, stage_config, init=source)
    checkpointing.write_model_json(stage_dir, spec.to_json())
  graphdef, state = nnx.split(ts)  # after init_stage_weights, which writes into ts.model
  if restored is not None:
    step, state = restored
    if step >= total_steps:
      logging.info("%s: already trained (%d of %d steps, %s); nothing to retrain", tag, step, total_steps, stage_dir)
    else:
      logging.info(
        "%s: resuming from step %d of %d (epoch %d, batch %d) in %s",
        tag,
        step,
        total_steps,
        step // steps_per_epoch,
        step % steps_per_epoch,
        ckpt.checkpoint_dir(step),
      )
  state_sharding = sharding.state_shardings(state, mesh, config.sharding.params, config.sharding.fsdp_min_size)
  state = jax.device_put(state, state_sharding)
  evaluate_model = evaluator(eval_graphdef(model), data.class_weights, eval_settings, mesh, state_sharding["model"])
  del model, ts

  lam = float(settings.lam) if stage == 2 else 0.0
  p_train_step = jit_train_step(graphdef, jnp.asarray(data.class_weights), lam, mesh, state_sharding, **options)
  p_train_step = sharding.compile_then_meet(p_train_step, f"{tag} train step")
  data_sharding = sharding.data_sharded(mesh)

  writer = _metric_writer(stage_dir)
  history = monitoring.read_history(stage_dir, step)
  log_every = max(int(config.log_every_steps), 1)
  log = monitoring.TrainLog(writer, schedule, tag=tag, global_batch=config.batch_size, epochs=settings.epochs,
                            steps_per_epoch=steps_per_epoch, total_steps=total_steps, step=step)  # fmt: skip
  guard = monitoring.FiniteGuard(tag, stage, settings.learning_rate, steps_per_epoch, schedule, ckpt)
  # A stop on an epoch's last step leaves that epoch unevaluated: resume at its end, not after it.
  first_epoch = (step - 1) // steps_per_epoch if step else 0
  if step < total_steps:
    logging.info("%s: compiling the train step for %s (the first step takes a while)", tag, mesh.devices.flat[0])
  try:
    for epoch in range(first_epoch, settings.epochs):
      if step < (epoch + 1) * steps_per_epoch:
        ds = input_pipeline.create_train_dataset(
          train_data,
          root=train_data.root,
          batch_size=config.batch_size // jax.process_count(),
          image_size=config.dataset.image_size,
          crop_size=config.dataset.crop_size,
          seed=config.seed,
          epoch=epoch,
          process_index=jax.process_index(),
          process_count=jax.process_count(),
          color_jitter=config.dataset.color_jitter,
          random_flip=config.dataset.random_flip,
          start_step=step - epoch * steps_per_epoch,
        )  # mid-epoch resume
        for batch in ds.as_numpy_iterator():
          state, metrics = p_train_step(state, sharding.put_batch(_model_inputs(batch), data_sharding))
          step += 1
          guard.push(step, metrics)  # checks the previous step's (already computed) metrics: no pipeline stall
          log.push(metrics)
          if step % log_every == 0 or step == total_steps:
            log.write(step, epoch)
          if stop.step_done(step):
            guard.check_all()
            ckpt.save(step, state)
            ckpt.wait()
            raise Preempted(
              f"{tag}: stopped at step {step}; checkpoint saved in {ckpt.checkpoint_dir(step)}; "
              "rerun the same command to resume"
            )
      guard.check_all()
      ckpt.save(step, state)  # before evaluating: a failing evaluation loses no training
      due = (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == settings.epochs
      if due and not any(h.epoch == epoch + 1 for h in history):
        t0 = time.time()
        result = evaluate_model(state["model"], test_data)
        ckpt.finish_save()  # written while evaluating; a failed save (a full disk) stops here, before the next epoch
        monitoring.write_eval(writer, step, result)
        logging.info(
          "%s epoch %d/%d: test mean F1 %.2f%%, mean accuracy %.2f%%, L_WA %.4f (%.1f s)",
          tag,
          epoch + 1,
          settings.epochs,
          100 * result.mean_f1,
          100 * result.mean_accuracy,
          result.loss,
          time.time() - t0,
        )
        ckpt.save_best(step, state["model"], {"mean_f1": result.mean_f1})  # before history.json has the epoch
        history.append(result.at(epoch + 1, step))
        monitoring.write_history(stage_dir, history)
      ckpt.finish_save()
    ckpt.wait()
    best_step = ckpt.best_step()
  except BaseException as e:
    try:
      writer.flush()
    except Exception as flush_error:  # pylint: disable=broad-except  # a full disk, say: not raised over ``e``
      logging.warning("%s: TensorBoard events not flushed (%s)", tag, flush_error)
    ckpt.abort()  # a failed save's error, raised again by orbax on closing, is not raised over ``e``
    words = checkpointing.no_space(e) if isinstance(e, OSError) else None
    if words is not None:  # history.json, the TensorBoard events
      raise ckpt.disk_full_error(words, "the stage's files", e.filename or stage_dir) from e
    raise
  writer.flush()
  ckpt.close()
  if not history:
    raise RuntimeError(f"{stage_dir}: finished without an evaluation; delete the folder and train again")
  # The epoch whose model best/ holds (ties in mean F1 resolved as orbax resolved them).
  best = next((h for h in history if h.step == best_step), max(history, key=lambda h: h.mean_f1))
  init = checkpointing.read_stage_config(stage_dir).get("init", "")
  return StageResult(stage, data.fold, last=history[-1], best=best, steps=step, epochs=settings.epochs, init=init,
                     history=tuple(history))  # fmt: skip


def _metric_writer(stage_dir: str) -> metric_writers.MetricWriter:
  """TensorBoard scalars of process 0 in ``stage_dir`` (the console gets ``monitoring.TrainLog``'s one line per
  log step instead of clu's metric dumps); nothing on other processes."""
  from clu import metric_writers  # pylint: disable=import-outside-toplevel  # not on the GPU image

  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncWriter(metric_writers.SummaryWriter(stage_dir))
