"""Two processes x two CPU devices (gloo over loopback), launched through Ray, train like one process.

Both runs train stage 2 of the tiny synthetic config for one epoch (4 steps) through ``experiment.run``; the
one-process run is conftest's one-device float64 run (``float64_one_device``, shared with test_sharding.py).
The two-process run is a one-run sweep on a real local Ray cluster (``python -m megraph_jax.launch.sweep run
--ray=local --hosts=2 --cpu_devices=2``): one Ray worker process per "host", joined by
``jax.distributed`` with the first process as coordinator. Each process reads its own half of every
global batch, orbax writes the checkpoints collectively, only process 0 writes logs and results.
A third, single-device process then restores the two-process run's checkpoint (a different device count) and
the test compares losses, F1 and every parameter in float64 to float64 noise (see test_sharding.py for why
float32 Adam cannot be compared closely after several steps).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import REPO
from sweep_files import PYTHON, sweep_env, tiny_overrides, write_sweep

from megraph_jax.launch import ray_sweep

# float64 noise (as tests/test_sharding.py; measured on an x86 CPU against one process with four devices: losses equal
# to 1e-16, parameters and BatchNorm statistics 4e-12 apart; against one device, as now: losses equal, 1.1e-12; 1 vs 8
# devices: 3.5e-12). A bug that moves the loss by 1e-7 of itself fails.
LOSS_RTOL = 1e-11
STATE_ATOL = 1e-9

READ = textwrap.dedent("""
    import json, os, sys
    sys.path[:0] = [{repo!r}, os.path.join({repo!r}, "tests")]
    import numpy as np
    from helpers import read_stage2_run, tiny_config
    config = tiny_config({cache!r}, mode="stage2", **{{"model.dtype": "float64", "stage2.init": "none"}})
    stage_dir, out = sys.argv[1], sys.argv[2]
    step, flat, losses, event_files = read_stage2_run(config, stage_dir)
    np.savez(out, **flat)
    print(json.dumps({{"step": step, "losses": losses, "event_files": event_files}}))
""")


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("MEGRAPH_")}
  env.update(
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    JAX_ENABLE_X64="1",
    TF_CPP_MIN_LOG_LEVEL="2",
    **extra,
  )
  return env


def _last_json(text: str) -> dict:
  return json.loads([line for line in text.strip().splitlines() if line.startswith("{")][-1])


def _read(tmp_path, cache: str, workdir):
  script = tmp_path / "read.py"
  script.write_text(READ.format(repo=REPO, cache=cache))
  out = tmp_path / f"{workdir.name}.npz"
  proc = subprocess.run(
    [sys.executable, str(script), str(workdir / "fold1" / "stage2"), str(out)],
    env=_env(1),
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return _last_json(proc.stdout), dict(np.load(out))


def test_two_processes_match_one_process(tmp_path, synthetic_cache, float64_one_device):
  one, p1 = float64_one_device  # one process, one device
  assert one["devices"] == 1 and len(one["losses"]) == 4

  sweep = write_sweep(
    str(tmp_path / "sweep_2x2.py"),
    "two",
    tiny_overrides(
      synthetic_cache, mode="stage2", log_every_steps=1, **{"model.dtype": "float64", "stage2.init": "none"}
    ),
    {},
  )
  proc = subprocess.run(
    [
      PYTHON,
      "-m",
      "megraph_jax.launch.sweep",
      "run",
      sweep,
      f"--root={tmp_path / 'ray'}",
      "--ray=local",
      "--ray_cpus=2",
      "--hosts=2",
      "--cpu_devices=2",
      "--max_retries=0",
    ],
    env=sweep_env(JAX_ENABLE_X64="1"),
    capture_output=True,
    text=True,
    timeout=500,
    check=False,
  )
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  two = tmp_path / "ray" / "run"
  ends = [a for a in ray_sweep.read_attempts(str(two)) if "end" in a]
  assert sorted(a["process"] for a in ends) == [0, 1] and all(a["attempt"] == 0 for a in ends)
  assert all((a["processes"], a["devices"], a["local_devices"]) == (2, 4, 2) for a in ends)
  assert ends[0]["mean_f1"] == ends[1]["mean_f1"]  # every process computes the same global metrics
  with open(two / "results.json") as f:  # written once, by process 0
    assert json.load(f)["folds"]["1"]["stage2"]["last"]["f1"] == pytest.approx(one["f1"], abs=1e-6)

  info2, p2 = _read(tmp_path, synthetic_cache, two)
  assert info2["step"] == 4 and info2["event_files"] == 1  # process 0's TensorBoard file only
  loss = np.max(np.abs(np.subtract(info2["losses"], one["losses"])) / np.abs(one["losses"]))
  assert p1.keys() == p2.keys() and len(p1) > 50
  name, worst = max(((k, np.max(np.abs(p2[k] - p1[k]), initial=0.0)) for k in p1), key=lambda t: t[1])
  print(f"2 processes: losses {loss:.2e} relative, parameters and statistics {worst:.2e} ({name}) off 1 process")
  assert loss <= LOSS_RTOL, f"losses {loss:.3g} relative off the one-process run (noise ~1e-16)"
  assert worst <= STATE_ATOL, f"{name} {worst:.3g} off the one-process run (noise ~4e-12)"
