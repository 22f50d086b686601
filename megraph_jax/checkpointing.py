"""Orbax checkpoints of one training stage: the last k (resume) and the best by validation mean F1."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from megraph_jax import sharding

MODEL_JSON = "model.json"  # constructor arguments of the model (as megraph_jax.convert.model_config)


def _abstract(tree: Any) -> Any:
  """Restore targets replicated over the devices of *this* run, whatever topology wrote the checkpoint."""
  repl = sharding.replicated(sharding.make_mesh())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), tree)


class StageCheckpoints:
  """``<stage_dir>/checkpoints`` (model state + optimizer state, last ``keep``) and ``<stage_dir>/best``.

  The step number of a checkpoint is the global optimizer step, so it also gives the data position
  (epoch = step // steps_per_epoch, batch = step % steps_per_epoch).
  """

  def __init__(self, stage_dir: str, *, keep: int = 2):
    self.stage_dir = os.path.abspath(stage_dir)
    self.latest = ocp.CheckpointManager(
        os.path.join(self.stage_dir, "checkpoints"), item_names=("state", "opt_state"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True))
    self.best = ocp.CheckpointManager(
        os.path.join(self.stage_dir, "best"), item_names=("state",),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["mean_f1"], best_mode="max",
                                             keep_checkpoints_without_metrics=False, create=True))

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, step: int, state: Any, opt_state: Any) -> None:
    """Saves the training state at ``step`` (asynchronously; ``wait()`` before exiting)."""
    if step in self.latest.all_steps():
      return
    self.latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   opt_state=ocp.args.StandardSave(opt_state)), force=True)

  def restore(self, state: Any, opt_state: Any) -> tuple[int, Any, Any] | None:
    """(step, state, opt_state) of the latest checkpoint shaped like the arguments, or None."""
    step = self.latest.latest_step()
    if step is None:
      return None
    out = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state)), opt_state=ocp.args.StandardRestore(_abstract(opt_state))))
    return step, out["state"], out["opt_state"]

  def save_best(self, step: int, state: Any, metrics: dict[str, float]) -> None:
    """Offers the model state at ``step`` with its validation metrics; kept if its mean F1 is the best."""
    if step in self.best.all_steps():
      return
    self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                   metrics={k: float(v) for k, v in metrics.items()})

  def best_step(self) -> int | None:
    return self.best.best_step()

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def write_model_json(stage_dir: str, cfg: dict[str, Any]) -> None:
  """Stores the model's constructor arguments next to its checkpoints (process 0)."""
  if jax.process_index() == 0:
    os.makedirs(stage_dir, exist_ok=True)
    with open(os.path.join(stage_dir, MODEL_JSON), "w") as f:
      json.dump(cfg, f, indent=2)


def read_model_json(stage_dir: str) -> dict[str, Any]:
  path = os.path.join(stage_dir, MODEL_JSON)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: missing; {stage_dir} is not a megraph-jax stage directory "
                            "(expected <workdir>/fold<k>/stage<s> with model.json, checkpoints/ and best/)")
  with open(path) as f:
    return json.load(f)


def restore_model_state(stage_dir: str, abstract_state: Any, *, which: str = "best") -> tuple[int, Any]:
  """(step, model state) from ``stage_dir/best`` (which='best') or ``stage_dir/checkpoints`` ('latest')."""
  sub = "best" if which == "best" else "checkpoints"
  directory = os.path.join(os.path.abspath(stage_dir), sub)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory}: no checkpoints; train that stage first or point to another directory")
  names = ("state",) if sub == "best" else ("state", "opt_state")
  with ocp.CheckpointManager(directory, item_names=names,
                             options=ocp.CheckpointManagerOptions(read_only=True)) as mgr:
    step = mgr.latest_step()  # the best manager keeps only the best one
    if step is None:
      raise FileNotFoundError(f"{directory}: no checkpoint saved yet")
    out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(abstract_state))))
  return step, out["state"]
