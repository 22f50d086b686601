"""Stop requests at step boundaries: SIGTERM, a step budget (testing), and multi-host preemption sync."""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging


class Preempted(Exception):
  """Raised after the state was saved because a stop was requested; rerun the same command to resume."""


class StopRequest:
  """Set by SIGTERM (or after ``stop_after_steps`` steps of this process); checked once per step."""

  def __init__(self, stop_after_steps: int = 0):
    self.stop_after_steps = stop_after_steps
    self.steps_run = 0
    self.signalled = False
    self._previous = None

  def install(self) -> "StopRequest":
    """Installs the SIGTERM handler (main thread only; elsewhere only the step budget applies)."""
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def uninstall(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    logging.warning("SIGTERM received: saving a checkpoint at the next step boundary, then stopping")
    self.signalled = True

  def step_done(self, step: int) -> bool:
    """Counts one optimizer step; True when training should save and stop now."""
    self.steps_run += 1
    stop = self.signalled or (self.stop_after_steps > 0 and self.steps_run >= self.stop_after_steps)
    if jax.process_count() > 1:  # every process must stop at the same step
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      stop = stop or multihost_utils.reached_preemption_sync_point(step)
    return stop
