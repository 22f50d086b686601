"""1 device vs 8 simulated CPU devices: same per-step losses, eval metrics and parameters (stage 2 through run()).

The runs use a float64 model (``model.dtype='float64'``, JAX_ENABLE_X64=1). In float32 the two runs agree
for the first steps (loss 3e-7 relative) and then drift to ~5e-4: Adam's first updates are
g / (|g| + eps), so gradients that are pure reduction-order noise (e.g. of BatchNorm biases, whose
exact gradient nearly cancels) become full-size steps of either sign. That is a property of float32
Adam, not of the sharding; in float64 the noise is 1e-16 and any real sharding bug (a BatchNorm moment
over the local instead of the global batch, a missed gradient all-reduce) changes
losses and parameters far beyond the tolerances (LOSS_RTOL, STATE_ATOL).
"""

import numpy as np
import pytest
from helpers import float64_stage2_runs

# float64 reduction-order noise, measured (x86 CPU, 8 vs 1 devices, 4 steps): losses equal, parameters and BatchNorm
# statistics 1.5e-12 apart (Adam's g / (|g| + eps) of near-zero gradients). A bug that moves the loss by 1e-7 of
# itself on 8 devices fails here.
LOSS_RTOL = 1e-11
STATE_ATOL = 1e-9


def test_one_vs_eight_devices_same_training(tmp_path, synthetic_cache, float64_one_device):
  """1 device (conftest's run, shared with test_multiprocess), 8 devices with replicated parameters, 8 devices with
  FSDP-sharded parameters: same run."""
  one, p1 = float64_one_device
  assert len(one["losses"]) == 4 and np.all(np.isfinite(one["losses"]))
  extras = [{}, {"sharding.params": "fsdp", "sharding.fsdp_min_size": 64}]
  for extra, (eight, p8) in zip(extras, float64_stage2_runs(8, tmp_path, synthetic_cache, extras)):  # one process
    if extra:
      assert eight["sharded_leaves"] > 30  # the big kernels and their AdamW moments are split 8 ways
    loss = np.max(np.abs(np.subtract(eight["losses"], one["losses"])) / np.abs(one["losses"]))
    assert eight["f1"] == pytest.approx(one["f1"], abs=1e-6)
    assert p1.keys() == p8.keys() and len(p1) > 50
    name, worst = max(((k, np.max(np.abs(p8[k] - p1[k]), initial=0.0)) for k in p1), key=lambda t: t[1])
    print(f"8 devices {extra}: losses {loss:.2e} relative, parameters and statistics {worst:.2e} ({name}) off 1")
    assert loss <= LOSS_RTOL, f"{extra}: losses {loss:.3g} relative off the 1-device run (noise ~1e-16)"
    assert worst <= STATE_ATOL, f"{extra}: {name} {worst:.3g} off the 1-device run (noise ~1.5e-12)"


def test_several_processes_compile_then_meet_before_the_first_run(monkeypatch):
  """With several processes a step's first call compiles, waits at the coordination-service barrier, then runs (gloo
  gives processes 30 s to meet at their first collective: one still compiling made the other fail); later calls
  run the executable with no barrier. One process: the jitted function itself."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from megraph_jax import sharding  # pylint: disable=import-outside-toplevel

  events = []

  class Jitted:  # records what the wrapper does with a jitted function, and does it
    def __init__(self, fn):
      self.fn = jax.jit(fn)

    def lower(self, *args):
      events.append("lower")
      lowered = self.fn.lower(*args)

      class Lowered:
        def compile(self):
          events.append("compile")
          executable = lowered.compile()
          return lambda *a: (events.append("run"), executable(*a))[1]

      return Lowered()

  step = Jitted(lambda x: 2 * x)
  assert sharding.compile_then_meet(step, "step") is step  # one process
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(sharding, "wait_for_all_processes", lambda what: events.append(f"barrier {what}"))
  call = sharding.compile_then_meet(step, "step")
  assert float(call(jnp.float32(3))) == 6.0 and float(call(jnp.float32(4))) == 8.0
  assert events == ["lower", "compile", "barrier step compiled", "run", "run"], events
