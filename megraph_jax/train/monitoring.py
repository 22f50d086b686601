"""What a training stage reports as it goes: train and eval scalars, ``history.json``, and the guard that stops
at the first non-finite step."""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from megraph_jax.errors import TrainingDiverged
from megraph_jax.stage_dirs import HISTORY
from megraph_jax.train.results import EvalResult


def write_eval(writer, step: int, r: EvalResult) -> None:
  scalars = {"eval/mean_f1": r.mean_f1, "eval/mean_accuracy": r.mean_accuracy, "eval/loss_wa": r.loss}
  scalars.update({f"eval/f1_{k}": v for k, v in r.f1.items()})
  scalars.update({f"eval/accuracy_{k}": v for k, v in r.accuracy.items()})
  writer.write_scalars(step, scalars)


def read_history(stage_dir: str, up_to_step: int) -> list[EvalResult]:
  path = os.path.join(stage_dir, HISTORY)
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [EvalResult.from_json(h) for h in json.load(f) if h["step"] <= up_to_step]


def write_history(stage_dir: str, history: list[EvalResult]) -> None:
  if jax.process_index() == 0:
    tmp = os.path.join(stage_dir, HISTORY + ".tmp")
    with open(tmp, "w") as f:
      json.dump([h.to_json() for h in history], f, indent=1)
    os.replace(tmp, os.path.join(stage_dir, HISTORY))


class FiniteGuard:
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
    epoch, batch = (step - 1) // self.steps_per_epoch + 1, (step - 1) % self.steps_per_epoch + 1
    lr = float(self.schedule(step - 1))
    raise TrainingDiverged(
      self.tag, step, epoch, batch, values, lr, saved or 0, stage=self.stage, learning_rate=self.learning_rate
    )


class TrainLog:
  """The training's log steps: buffers each step's metrics and, at a log step, writes their means, the lr and the
  throughput as TensorBoard scalars and one console line (blocking on the last step)."""

  def __init__(self, writer, schedule, *, tag: str, global_batch: int, epochs: int, steps_per_epoch: int,
               total_steps: int, step: int):  # fmt: skip
    self.writer, self.schedule, self.tag, self.global_batch = writer, schedule, tag, global_batch
    self.epochs, self.steps_per_epoch, self.total_steps = epochs, steps_per_epoch, total_steps
    self._pending: list[dict[str, jax.Array]] = []
    self._t_log, self._steps_at_log = time.time(), step  # since the last log step (or the start)

  def push(self, metrics: dict[str, jax.Array]) -> None:
    """Buffers one step's metrics (no device read)."""
    self._pending.append(metrics)

  def write(self, step: int, epoch: int) -> None:
    """Writes the mean of the buffered metrics at ``step`` (0-based ``epoch``) and starts a new buffer."""
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *self._pending)
    means = {k: float(np.mean(v)) for k, v in jax.device_get(stacked).items()}
    elapsed = max(time.time() - self._t_log, 1e-9)
    img_s = (step - self._steps_at_log) * self.global_batch / elapsed
    lr = float(self.schedule(step - 1))  # the lr used by the last step
    scalars = {**{f"train/{k}": v for k, v in means.items()}, "train/lr": lr, "train/img_per_s": img_s}
    self.writer.write_scalars(step, scalars)
    parts = " ".join(f"{k} {means[k]:.4f}" for k in ("total", "wa", "edge") if k in means)
    logging.info(
      "%s epoch %d/%d step %d/%d (batch %d/%d): %s lr %.3g %.1f img/s",
      self.tag,
      epoch + 1,
      self.epochs,
      step,
      self.total_steps,
      step - epoch * self.steps_per_epoch,
      self.steps_per_epoch,
      parts,
      lr,
      img_s,
    )
    self._pending, self._t_log, self._steps_at_log = [], time.time(), step
