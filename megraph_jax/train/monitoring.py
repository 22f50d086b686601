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


def log_train(
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
