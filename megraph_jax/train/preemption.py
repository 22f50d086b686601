"""Stop requests at step boundaries: SIGTERM, SIGINT (Ctrl-C), a step budget (testing), multi-host preemption sync."""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped early after saving a checkpoint; rerun the same command to resume
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Raised after the state was saved because a stop was requested; rerun the same command to resume."""


class StopRequest:
  """Set by SIGTERM or SIGINT (or after ``stop_after_steps`` steps of this process); checked once per step.

  A second SIGINT while a stop is pending interrupts at once (KeyboardInterrupt), as Ctrl-C usually does.
  """

  def __init__(self, stop_after_steps: int = 0):
    self.stop_after_steps = stop_after_steps
    self.steps_run = 0
    self.signalled = False
    self._previous: dict[int, object] = {}

  def install(self) -> "StopRequest":
    """Installs the SIGTERM/SIGINT handlers (main thread only; elsewhere only the step budget applies)."""
    if threading.current_thread() is threading.main_thread():
      for sig in STOP_SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def uninstall(self) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    name = signal.Signals(signum).name
    if signum == signal.SIGINT and self.signalled:
      raise KeyboardInterrupt(f"second {name}: stopping without a checkpoint")
    logging.warning(
      "%s received: saving a checkpoint at the next step boundary, then stopping (exit status %d)%s",
      name,
      EXIT_PREEMPTED,
      "; press Ctrl-C again to stop at once" if signum == signal.SIGINT else "",
    )
    self.signalled = True

  def step_done(self, step: int) -> bool:
    """Counts one optimizer step; True when training should save and stop now."""
    self.steps_run += 1
    stop = self.signalled or (self.stop_after_steps > 0 and self.steps_run >= self.stop_after_steps)
    if jax.process_count() > 1:  # every process must stop at the same step
      stop = stop or multihost_utils.reached_preemption_sync_point(step)
    return stop
