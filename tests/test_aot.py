"""Compiling for a TPU slice on this CPU host (libtpu's compile-only devices): the tiny config on v5e:2x2.

XLA:TPU compiles the real train and eval steps; the test checks the report's figures are those of
4 chips of one host, that a batch that cannot shard is refused with exit status 2 before compiling,
and that a step larger than a chip's HBM exits with status 3.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import REPO, tiny_config

from megraph_jax.launch import aot, tpu_topology

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="compiling for TPU needs libtpu")

# Compiled-HLO lines as XLA prints them (synchronous ops, async -start / -done pairs whose -start result also holds
# the operands, a fusion whose name holds 'all-reduce', metadata naming one): known counts and result bytes.
HLO = textwrap.dedent("""\
  HloModule jit_train_step, is_scheduled=true

  %add (x: f32[], y: f32[]) -> f32[] {
    %x = f32[] parameter(0)
    %y = f32[] parameter(1)
    ROOT %sum = f32[] add(f32[] %x, f32[] %y)
  }

  ENTRY %main.42 (p0: f32[1024,256], p1: f32[64], p2: bf16[32]) -> f32[1024,256] {
    %p0 = f32[1024,256]{1,0} parameter(0)
    %all-reduce.1 = f32[1024,256]{1,0} all-reduce(f32[1024,256]{1,0} %p0), channel_id=1, to_apply=%add
    %all-reduce-start.2 = (f32[64]{0}, bf16[32]{0}) all-reduce-start(f32[64]{0} %p1, bf16[32]{0} %p2), to_apply=%add
    %all-reduce-done.2 = (f32[64]{0}, bf16[32]{0}) all-reduce-done((f32[64]{0}, bf16[32]{0}) %all-reduce-start.2)
    %all-gather-start.3 = (f32[2,128]{1,0}, f32[8,128]{1,0}) all-gather-start(f32[2,128]{1,0} %a), dimensions={0}
    %all-gather-done.3 = f32[8,128]{1,0} all-gather-done((f32[2,128]{1,0}, f32[8,128]{1,0}) %all-gather-start.3)
    %all-gather.4 = s32[4,4]{1,0} all-gather(s32[1,4]{1,0} %b), replica_groups={{0,1,2,3}}, dimensions={0}
    %reduce-scatter.5 = bf16[256,16]{1,0} reduce-scatter(bf16[1024,16]{1,0} %c), dimensions={0}, to_apply=%add
    %collective-permute.6 = f32[16]{0} collective-permute(f32[16]{0} %d), source_target_pairs={{0,1},{1,0}}
    %fusion.7 = f32[4]{0} fusion(f32[4]{0} %e), calls=%fused_all-reduce, metadata={op_name="all-reduce(x)"}
    ROOT %add.8 = f32[1024,256]{1,0} add(f32[1024,256]{1,0} %all-reduce.1, f32[1024,256]{1,0} %p0)
  }
  """)


def test_collectives_of_hand_written_hlo():
  assert aot.collectives(HLO) == {
    "all-reduce": {"count": 2, "bytes": 1024 * 256 * 4 + 64 * 4 + 32 * 2},  # the -done's result, not the -start's
    "all-gather": {"count": 2, "bytes": 8 * 128 * 4 + 4 * 4 * 4},
    "reduce-scatter": {"count": 1, "bytes": 256 * 16 * 2},
    "collective-permute": {"count": 1, "bytes": 16 * 4},
  }
  assert aot.collectives("ENTRY %m () -> f32[] {\n  ROOT %c = f32[] constant(0)\n}") == {}


def test_step_time_model_by_hand():
  chip = tpu_topology.CHIPS["v5e"]
  chip = type(chip)(**{**chip.__dict__, "peak_bf16_tflops": 200.0, "ici_gbps": 1600.0})  # 200 GB/s
  train = {
    "flops_per_chip": 4e12,
    "collectives": {"all-reduce": {"count": 3, "bytes": 6e8}, "all-gather": {"bytes": 4e8}},
  }
  # compute: 4e12 / (200e12 x 0.5) = 0.04 s; collectives: 2 (4 - 1) / 4 x 1e9 B / 200e9 B/s = 0.0075 s
  t = aot.step_time(train, chip, chips=4, global_batch=256, hosts=2, mfu=0.5)
  assert t == pytest.approx(
    {"compute_s": 0.04, "collective_s": 0.0075, "step_s": 0.04, "images_per_s": 6400.0, "images_per_s_per_host": 3200.0}
  )
  train["collectives"]["all-gather"]["bytes"] = 7.4e9  # 8e9 B: 2 x 3/4 x 8e9 / 200e9 = 0.06 s, more than compute
  t = aot.step_time(train, chip, chips=4, global_batch=256, hosts=2, mfu=0.5)
  assert (t["collective_s"], t["step_s"], t["images_per_s"]) == pytest.approx((0.06, 0.06, 256 / 0.06))
  t = aot.step_time(train, chip, chips=1, global_batch=8, hosts=1, mfu=0.5)  # one chip: no collectives
  assert (t["collective_s"], t["step_s"]) == (0.0, pytest.approx(0.04))


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


@needs_libtpu
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


@needs_libtpu
def test_cli_exit_status_for_unshardable_and_too_large():
  proc = _cli("--topology=v5e:4x4", "--config.batch_size=8")  # 16 chips, batch 8
  assert proc.returncode == aot.EXIT_CONFIG_ERROR and "per-chip batch of 0" in proc.stderr
  proc = _cli("--topology=v5e:1x1", "--steps=eval", "--config.eval_batch_size=4096", "--config.dataset.crop_size=224")
  assert proc.returncode == aot.EXIT_DOES_NOT_FIT, proc.stderr[-2000:]
  assert "| fits" in proc.stdout and "NO: exceeds HBM" in proc.stdout
