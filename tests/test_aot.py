"""Compiling for a TPU slice on this CPU host (libtpu's compile-only devices): the tiny config on v5e:2x2.

XLA:TPU compiles the real train and eval steps; the test checks the report's figures are those of
4 chips of one host, that a batch that cannot shard is refused with exit status 2 before compiling,
and that a step larger than a chip's HBM exits with status 3.
"""

import os
import subprocess
import sys

import pytest
from helpers import REPO, tiny_config

from megraph_jax.launch import aot, tpu_topology

pytest.importorskip("libtpu")


def test_slice_names():
  chip, bounds = tpu_topology.parse("v4-8")
  assert (chip.version, bounds) == ("v4", (2, 2, 1))  # v4 names count TensorCores: 4 chips
  assert tpu_topology.parse("v5e-64")[1] == (8, 8)
  assert tpu_topology.parse("v5litepod-16")[0].version == "v5e"
  assert tpu_topology.parse("v5e:4x4")[1] == (4, 4)
  assert tpu_topology.parse("v5p:2x2x2")[1] == (2, 2, 2)
  for bad in ("v4-6", "v9:2x2", "tpu"):
    with pytest.raises(ValueError):
      tpu_topology.parse(bad)
  s = tpu_topology.describe("v5e:4x4")
  assert (s.chips, s.hosts, s.pod_type) == (16, 4, "v5e-16")
  s = tpu_topology.describe("v4-8")
  assert (s.chips, s.hosts) == (4, 1)


def test_shapes_that_cannot_shard():
  assert aot.check_shapes(64, 16, 4) == 4
  with pytest.raises(aot.ShapeError, match="per-chip batch of 0"):
    aot.check_shapes(64, 256, 64)
  with pytest.raises(aot.ShapeError, match="use 48 or 64"):
    aot.check_shapes(60, 16, 4)


def test_tiny_config_compiles_for_v5e_2x2(synthetic_cache):
  config = tiny_config(synthetic_cache, mode="stage2")
  r = aot.compile_report(config, "v5e:2x2", stage=2)
  assert (r["chips"], r["hosts"], r["global_batch"], r["per_chip_batch"]) == (4, 1, 8, 2)
  for step in ("train", "eval"):
    mem = r[step]["memory"]
    assert 0 < mem["arguments"] <= mem["total"] < r["hbm_capacity"]
    assert r[step]["flops_per_chip"] > 0
  assert "all-reduce" in r["train"]["collectives"]  # gradients and BatchNorm statistics over the data axis
  assert r["fits"] and r["train"]["images_per_s"] > 0
  assert r["eval"]["flops_per_chip"] < r["train"]["flops_per_chip"]
  text = aot.format_report(r)
  assert "v5e:2x2 (v5e-4): 4 chips, 1 hosts" in text and "| fits" in text


def _cli(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
  return subprocess.run(
    [sys.executable, "-m", "megraph_jax.launch.aot", "--config=configs/synthetic.py", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )


def test_cli_exit_status_for_unshardable_and_too_large():
  proc = _cli("--topology=v5e:4x4", "--config.batch_size=8")  # 16 chips, batch 8
  assert proc.returncode == aot.EXIT_CONFIG_ERROR and "per-chip batch of 0" in proc.stderr
  proc = _cli("--topology=v5e:1x1", "--steps=eval", "--config.eval_batch_size=4096", "--config.dataset.crop_size=224")
  assert proc.returncode == aot.EXIT_DOES_NOT_FIT, proc.stderr[-2000:]
  assert "| fits" in proc.stdout and "NO: exceeds HBM" in proc.stdout
