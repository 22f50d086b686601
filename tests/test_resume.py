"""Preemption and resume: a run stopped mid-epoch (twice, once in each stage) ends with the same parameters."""

import os
import signal

import numpy as np
from flax import nnx

from conftest import tiny_config
from megraph_jax import checkpointing, initialization
from megraph_jax.preemption import StopRequest
from megraph_jax.train import run


def _final(workdir, config, stage):
  graphdef, state = nnx.split(nnx.eval_shape(lambda: initialization.build_model(config, stage)))
  step, state = checkpointing.restore_model_state(os.path.join(workdir, "fold1", f"stage{stage}"), state,
                                                  which="latest")
  return step, {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


def test_interrupted_run_resumes_to_identical_parameters(tmp_path, synthetic_cache):
  config = tiny_config(synthetic_cache, mode="train")  # stage 1: 2 epochs x 4 steps; stage 2: 1 x 4
  straight = str(tmp_path / "straight")
  run(config, straight)

  resumed = str(tmp_path / "resumed")
  first = run(tiny_config(synthetic_cache, mode="train", stop_after_steps=3), resumed)  # stage 1, epoch 1, batch 3
  assert first["preempted"] and "step 3" in first["message"]
  assert checkpointing.StageCheckpoints(os.path.join(resumed, "fold1", "stage1")).latest_step() == 3
  second = run(tiny_config(synthetic_cache, mode="train", stop_after_steps=7), resumed)  # stage 1 to 8, stage 2 to 2
  assert second["preempted"] and "stage 2: stopped at step 2" in second["message"]
  done = run(config, resumed)  # the same command again finishes
  assert not done.get("preempted")

  for stage in (1, 2):
    step_a, a = _final(straight, config, stage)
    step_b, b = _final(resumed, config, stage)
    assert step_a == step_b == (8 if stage == 1 else 4)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-6, err_msg=f"stage {stage}: {k}")
  hist_a = done["folds"]["1"]["stage2"]["history"]
  with open(os.path.join(straight, "results.json")) as f:
    import json  # pylint: disable=import-outside-toplevel
    hist_b = json.load(f)["folds"]["1"]["stage2"]["history"]
  assert [h["mean_f1"] for h in hist_a] == [h["mean_f1"] for h in hist_b]


def test_sigterm_requests_a_stop_at_the_next_step():
  stop = StopRequest().install()
  try:
    assert not stop.step_done(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signalled and stop.step_done(2)
  finally:
    stop.uninstall()
  assert signal.getsignal(signal.SIGTERM) is not stop._handle  # pylint: disable=protected-access
