"""benchmarks/device_check.py, what a GPU owner runs at full size, at its tiny size here: every part runs and passes;
its jaxpr FLOP counter against hand counts; its imports on an image without TensorFlow, ml_collections and clu."""

import gzip
import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from golden_cases import FAST_FULL, MEGRAPH_HEADS, OPENGRAPHAU_HEADS
from helpers import REPO
from jax import lax

from megraph_jax.model_factory import ModelSpec

SCRIPT = os.path.join(REPO, "benchmarks", "device_check.py")


def _module():
  if "device_check" not in sys.modules:
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module
    spec.loader.exec_module(module)
  return sys.modules["device_check"]


def _flops(fn, *shapes, dtype=jnp.float32) -> int:
  args = [jax.ShapeDtypeStruct(s, dtype) for s in shapes]
  return _module().jaxpr_flops(jax.make_jaxpr(fn)(*args))


def test_flop_counter_matches_hand_counts():
  dc = _module()
  # dot [3,4] @ [4,5]: 3*5 outputs, 4 multiply-adds each
  assert _flops(lambda a, b: a @ b, (3, 4), (4, 5)) == 2 * 3 * 5 * 4 == 120
  # batched: 2 x [3,4] @ [4,5]
  assert _flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), (2, 3, 4), (2, 4, 5)) == 2 * 2 * 3 * 5 * 4
  # value and both gradients: forward a@b, then g@b^T and a^T@g, each 120
  assert _flops(jax.value_and_grad(lambda a, b: jnp.sum(a @ b), argnums=(0, 1)), (3, 4), (4, 5)) == 3 * 120

  def conv(x, k, groups=1):
    return lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
    )

  # 3x3 conv, 3 -> 16 channels on 8x8: 8*8*16 outputs, 3*3*3 multiply-adds each
  assert _flops(conv, (1, 8, 8, 3), (3, 3, 3, 16)) == 2 * 8 * 8 * 16 * 27 == 55296
  # grouped (3 groups of 2 -> 2 channels): each output sums over its group's 2 inputs x 3x3
  assert _flops(lambda x, k: conv(x, k, 3), (1, 8, 8, 6), (3, 3, 2, 6)) == 2 * 8 * 8 * 6 * 2 * 9

  def scanned(c, w):  # 7 trips of [2,3] @ [3,3], the product inside jit and remat: 7 * 36 multiply-adds
    body = jax.checkpoint(jax.jit(lambda c, w: jnp.tanh(c @ w)))
    return lax.scan(lambda c, _: (body(c, w), None), c, None, length=7)[0]

  assert _flops(scanned, (2, 3), (3, 3)) == 7 * 2 * 2 * 3 * 3 == 252

  def branches(p, a, b):  # only one branch runs: the costlier one counts
    return lax.cond(p[0] > 0, lambda: a @ b, lambda: a[:, :1] @ b[:1])

  assert _flops(branches, (1,), (3, 4), (4, 5)) == 120

  @jax.custom_vjp
  def f(a):
    return a @ a

  f.defvjp(lambda a: (a @ a, a), lambda a, g: (g @ a.T + a.T @ g,))
  assert _flops(f, (4, 4)) == 2 * 4 * 4 * 4
  notes = set()
  loop = lambda a: lax.while_loop(lambda c: c[0, 0] < 10, lambda c: c @ a, a)
  assert dc.jaxpr_flops(jax.make_jaxpr(loop)(jnp.ones((4, 4))), notes) == 2 * 4 * 4 * 4 and notes


def test_flops_by_operand_dtype():
  """The float32 share of a bf16 program: products whose left operand is float32 (a mixed product runs in float32)."""
  dc = _module()

  def step(a, b, c):  # a bf16 product, a float32 one and a mixed one (float32 lhs)
    return (a @ b).astype(jnp.float32).sum() + (c @ c).sum() + (c @ b.astype(jnp.float32)).sum()

  args = (jnp.ones((3, 4), jnp.bfloat16), jnp.ones((4, 4), jnp.bfloat16), jnp.ones((4, 4), jnp.float32))
  got = dc.flops_by_dtype(jax.make_jaxpr(step)(*args))
  assert got == {"bfloat16": 2 * 3 * 4 * 4, "float32": 2 * 2 * 4 * 4 * 4}, got
  assert dc.jaxpr_flops(jax.make_jaxpr(step)(*args)) == sum(got.values())


def test_op_times_reads_a_gpu_trace(tmp_path):
  """:func:`op_times` on a Perfetto trace laid out as jax.profiler writes one on a GPU: the device's "XLA Ops" line
  (not its streams' kernels, which would count the same work twice, nor the host), overlapping ops' busy time once."""
  meta = lambda ph_name, pid, name, tid=0: {"ph": "M", "name": ph_name, "pid": pid, "tid": tid, "args": {"name": name}}
  op = lambda name, pid, tid, ts, dur: {"ph": "X", "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur}
  events = [
    meta("process_name", 1, "/host:CPU"), meta("thread_name", 1, "python", 5),
    meta("process_name", 2, "/device:GPU:0"), meta("thread_name", 2, "XLA Ops", 7),
    meta("thread_name", 2, "Stream #13(Compute)", 8),
    op("PjitFunction(step)", 1, 5, 0, 1000),
    op("convolution.3", 2, 7, 100, 300), op("loop_fusion.1", 2, 7, 350, 100),  # overlaps the conv by 50 us
    op("loop_fusion.1", 2, 7, 600, 50), op("cudnn_kernel_xyz", 2, 8, 100, 300),
  ]  # fmt: skip
  path = tmp_path / "perfetto_trace.json.gz"
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)
  got = _module().op_times(str(path))
  assert got["where"] == "device XLA Ops"
  assert got["ops"] == {"convolution.3": 300.0, "loop_fusion.1": 150.0}
  assert got["busy_us"] == 300 + 50 + 50 and got["span_us"] == 550
  events = [e for e in events if e.get("tid") != 7]  # no XLA Ops line: the streams' kernels
  with gzip.open(path, "wt") as f:
    json.dump(events, f)
  got = _module().op_times(str(path))
  assert got["where"] == "device streams" and got["ops"] == {"cudnn_kernel_xyz": 300.0}


def test_tiny_run_passes_every_check(tmp_path):
  out = tmp_path / "device_check.json"
  assert _module().main(["--size", "tiny", "--out", str(out)]) == 0
  report = json.loads(out.read_text())
  assert report["ok"] and not report["failures"], report["failures"]
  assert report["environment"]["size"] == "tiny"

  cells = {(r["config"], r["stage"], r["dtype"]) for r in report["compile"] if r["ok"]}
  want = {(c, s, d) for c in ("bp4d_resnet50", "bp4d_swin") for s in (1, 2) for d in ("float32", "bfloat16")}
  assert cells == want, [r.get("error") for r in report["compile"] if not r["ok"]]
  assert all(math.isfinite(r["loss"]) and r["train_gflop_per_image"] > 0 for r in report["compile"])

  runs = {r["mode"]: r for r in report["predict"]["runs"]}
  frames = report["predict"]["frames"]
  assert runs["no-align"]["exit"] == 0
  assert runs["no-align"]["rows"] == {"photo.png": {"ok": 1}, "clip.mp4": {"ok": frames}}
  for run in runs.values():  # face mode where TensorFlow and mtcnn import: a row per face or per faceless input
    assert run["ok"] and sum(run["rows"]["clip.mp4"].values()) >= frames, run

  parity = {r["case"]: r for r in report["parity"]["cases"]}
  names = [f"megraph_head/{n}" for n in MEGRAPH_HEADS] + [f"opengraphau_head/{n}" for n in OPENGRAPHAU_HEADS]
  names += [f"opengraphau_full/{n}" for n in FAST_FULL]
  assert set(names) <= set(parity)
  for name in names:
    assert parity[name]["highest"] < 1e-5, parity[name]

  rows = report["throughput"]["rows"]
  assert {(r["config"], r["dtype"]) for r in rows} == {(c, d) for c, _, d in want}
  for r in rows:
    assert r["train_img_per_s"] > 0 and r["eval_img_per_s"] > 0, r
    assert r["train_gflop_per_image"] > r["eval_gflop_per_image"] > 0, r  # backward + update cost more
    assert r["train_tflop_per_s"] > 0 and r["train_memory"]["total_gib"] > 0, r
  assert all(v > 0 for k, v in report["throughput"]["peak_tflop_per_s"].items() if k != "matmul_size")
  assert set(report["elapsed_s"]) == {"compile", "predict", "parity", "profile", "throughput", "total"}
  # The share of matmul FLOPs with float32 operands: all of a float32 step, less of a bf16 one (full size 1-3%; at
  # tiny sizes the head's float32 paths weigh more: 0-0.2% for the ResNet-18 cells, 5% and 76% for the tiny Swin's).
  share = {(r["config"], r["stage"], r["dtype"]): r["train_float32_flop_share"] for r in report["compile"]}
  assert all(v == 1.0 for k, v in share.items() if k[2] == "float32"), share
  assert all(v < 0.95 for k, v in share.items() if k[2] == "bfloat16"), share
  assert max(v for k, v in share.items() if k[0] == "bp4d_resnet50" and k[2] == "bfloat16") < 0.05, share
  profiles = {r["config"]: r for r in report["profile"]}
  assert set(profiles) == {"bp4d_resnet50", "bp4d_swin"}, profiles
  for r in profiles.values():  # XLA:CPU's executor threads read from the trace jax.profiler wrote
    assert r["read_from"] == "host XLA:CPU threads" and r["distinct_ops"] > 10, r
    assert 0 < r["busy_ms_per_step"] <= 1.05 * r["wall_ms_per_step"], r
    assert 0 < r["matmul_conv_share"] < 1 and r["top_ops"][0]["share"] >= r["top_ops"][-1]["share"] > 0, r


_WITHOUT = """
import importlib.abc, json, sys
class _Absent(importlib.abc.MetaPathFinder):  # the GPU image: no TensorFlow, ml_collections, clu, TFDS
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "ml_collections", "clu"):
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Absent())
sys.path.insert(0, sys.argv[1])
import device_check as dc
from megraph_jax.model_factory import ModelSpec
notes = dc.install_stand_ins()
stage, _ = dc.train_modules()
from megraph_jax.predict import predictor  # noqa
settings = dc.Settings("full", 64, 10, 3, {"resnet": 224, "swin": 224}, None)
out = {"notes": notes, "tf": "tensorflow" in sys.modules}
for family in dc.FAMILIES:
  config = dc.run_config(family, settings)
  out[family] = [ModelSpec.from_config(config, s).to_json() for s in (1, 2)] + [stage.step_options(config),
    config.stage2.lam, config.stage2.learning_rate]
print("RESULT " + json.dumps(out))
"""


def test_imports_and_configs_without_tensorflow_ml_collections_clu():
  """As on the GPU image: configs/*.py read through the stand-in ConfigDict give the same models and step options;
  megraph_jax.train.stage and the predict CLI import; TensorFlow is never imported."""
  dc = _module()
  proc = subprocess.run(
    [sys.executable, "-c", _WITHOUT, os.path.dirname(SCRIPT)], capture_output=True, text=True, timeout=300, cwd=REPO
  )
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  got = json.loads(lines[0][len("RESULT ") :])
  assert not got["tf"] and len(got["notes"]) == 2 and "ml_collections" in got["notes"][0] and "clu" in got["notes"][1]
  settings = dc.Settings("full", 64, 10, 3, {"resnet": 224, "swin": 224}, None)
  from megraph_jax.train import stage  # pylint: disable=import-outside-toplevel

  for family in dc.FAMILIES:
    config = dc.paper_config(family)  # ml_collections here
    want = [ModelSpec.from_config(config, s).to_json() for s in (1, 2)] + [stage.step_options(config)]
    want += [config.stage2.lam, config.stage2.learning_rate]
    assert got[family] == json.loads(json.dumps(want)), family
    assert dc.run_config(family, settings).model.backbone == config.model.backbone


def test_stand_in_config_reads_like_config_dict():
  dc = _module()
  c = dc.StandInConfig()
  c.model = dc.StandInConfig()
  c.model.dtype = "float32"
  assert c.to_dict() == {"model": {"dtype": "float32"}}
  with pytest.raises(AttributeError):
    _ = c.dataset
