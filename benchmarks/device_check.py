"""Device check: the paper configs' jitted steps, prediction, golden parity and throughput on this machine's device.

Usage: python benchmarks/device_check.py [--size tiny|full] [--only compile,predict,parity,profile,throughput]
         [--steps 10] [--warmup 3] [--batch 64] [--official PATH_TO_ME-GraphAU] [--out device_check.json]

One line per check as it goes, everything in ``--out`` (JSON, rewritten after each part); exit status 1 when a
check failed. Parts:

- **compile**: ``configs/bp4d_resnet50.py`` and ``configs/bp4d_swin.py``, stages 1 and 2, float32 and bfloat16:
  the train and eval steps as ``megraph_jax.train.stage.jit_train_step`` / ``jit_eval_step`` build them (with
  ``step_options(config)``, XLA's default flags), traced, compiled and run once on a device-resident random batch.
- **predict**: a random stage-2 ResNet-50 (tiny: ResNet-18) saved with ``loader.save``; the predict CLI
  (``megraph_jax.predict``'s ``main``) on a synthetic photo and a synthetic video with ``--no-align`` (one row per
  image / frame); face mode (MTCNN) too where TensorFlow and mtcnn import.
- **parity**: the golden files of the official code (``tools/golden_cases.py``): max |au_probs - official| per
  case at precision 'highest' (passes within 1e-5) and 'default'.
- **profile**: the bfloat16 stage-2 train step of both configs under ``jax.profiler`` (``--steps`` steps): the
  trace (Perfetto JSON and XPlane, for TensorBoard's profile plugin or ui.perfetto.dev) under ``profile_<config>/``
  beside ``--out``, and the ops that took most device time (:func:`op_times`): share of the step, matmul/conv
  kernels vs the rest, device busy time vs wall time (launch gaps). Where the float32 share of the step's matmul
  FLOPs is printed by **compile** (bf16 steps leave ~1-3% in float32: softmax/loss islands, not the cost).
- **throughput**: stage 2 of both configs in float32 and bfloat16: img/s and ms per train / eval step, FLOPs per
  image counted from the steps' jaxprs (:func:`jaxpr_flops`: 2 x MACs of every dot_general and convolution; XLA's
  GPU cost analysis leaves cuDNN convolutions out), TFLOP/s and utilisation against matmul peaks measured here,
  XLA's compiled memory and the device's peak memory. With ``--official`` (and PyTorch): the official model in
  fp32 and in bf16 autocast + channels_last on the same device, and our / their speed.

``--size full`` (default off CPU): the official batch 64 at 224 px, 3 warm-up and 10 timed steps, every golden
case. ``--size tiny`` (default on CPU, CI's ``tests/test_device_check.py``): batch 2, ResNet-50 as ResNet-18 at
32 px, Swin-B as a 2-stage Swin of the same code at 56 px (the 4-stage Swins need 224 px), 1 + 1 steps, the golden
heads and 64 px whole models, 'highest' only on CPU (where every precision computes the same). Neither TensorFlow,
ml_collections nor clu is needed: where ml_collections is missing, a minimal stand-in (said in the output) lets
``configs/*.py`` import (the library imports ml_collections for type hints only, and clu only in a stage's loop).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import dataclasses
import glob
import gzip
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (os.path.join(REPO, "tools"), REPO):  # golden_cases, check_official_parity; configs, megraph_jax
  if _path not in sys.path:
    sys.path.insert(0, _path)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.extend.core import ClosedJaxpr, Jaxpr  # noqa: E402

from megraph_jax import loader, model_factory, numerics, sharding  # noqa: E402
from megraph_jax.model_factory import ModelSpec  # noqa: E402

PARTS = ("compile", "predict", "parity", "profile", "throughput")
FAMILIES = {"resnet": "bp4d_resnet50", "swin": "bp4d_swin"}  # configs/<name>.py: the paper's two backbones
DTYPES = ("float32", "bfloat16")
TINY_IMG = {"resnet": 32, "swin": 56}
TINY_BACKBONE = {"resnet": "resnet18"}  # on 2 CPU cores ResNet-50's train step traces and compiles 2x longer
TINY_SWIN = dict(embed_dim=32, depths=(2, 2), num_heads=(1, 2))  # Swin code at 56 px: 14 -> 7 token grid
PARITY_ATOL = 1e-5
OPTIONAL = ("ml_collections", "clu", "tensorflow", "mtcnn", "torch", "torchvision", "timm", "cv2", "matplotlib")


# ----------------------------------------------------------------------------- FLOPs from a jaxpr


def _sub_jaxprs(value: Any) -> list[Jaxpr]:
  """The jaxprs held by one equation parameter (a Jaxpr, a ClosedJaxpr or a tuple of them, e.g. cond's branches)."""
  items = value if isinstance(value, (tuple, list)) else (value,)
  return [v.jaxpr if isinstance(v, ClosedJaxpr) else v for v in items if isinstance(v, (Jaxpr, ClosedJaxpr))]


def jaxpr_flops(jaxpr: Jaxpr | ClosedJaxpr, notes: set[str] | None = None) -> int:
  """FLOPs of the matrix products of ``jaxpr``: 2 x multiply-adds of every ``dot_general`` and
  ``conv_general_dilated``, sub-jaxprs included (jit/pjit, remat, custom_jvp/vjp, shard_map: once; ``scan``: times
  its length; ``cond``: its costliest branch; ``while``: one trip, said in ``notes``). Elementwise work is left out:
  it is what the matrix units do not do."""
  return sum(flops_by_dtype(jaxpr, notes).values())


def flops_by_dtype(jaxpr: Jaxpr | ClosedJaxpr, notes: set[str] | None = None) -> collections.Counter:
  """:func:`jaxpr_flops` by the dtype of the products' left operands (``{'bfloat16': ..., 'float32': ...}``): the
  float32 share of a bf16 step is work that runs at float32 (or TF32) rate on a GPU's tensor cores."""
  jaxpr = jaxpr.jaxpr if isinstance(jaxpr, ClosedJaxpr) else jaxpr
  total: collections.Counter = collections.Counter()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total[str(eqn.invars[0].aval.dtype)] += (
        2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
      )
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape  # each output element: a dot over the kernel's input features and window
      out_feature = eqn.params["dimension_numbers"].rhs_spec[0]
      total[str(eqn.invars[0].aval.dtype)] += (
        2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) // rhs[out_feature]
      )
    subs = {k: _sub_jaxprs(v) for k, v in eqn.params.items()}
    subs = {k: v for k, v in subs.items() if v}
    if not subs:
      continue
    if name == "cond":
      total += max((flops_by_dtype(j, notes) for j in subs["branches"]), key=lambda c: sum(c.values()))
      continue
    inner: collections.Counter = collections.Counter()
    for js in subs.values():
      for j in js:
        inner += flops_by_dtype(j, notes)
    if name == "scan":
      inner = collections.Counter({k: v * int(eqn.params["length"]) for k, v in inner.items()})
    elif name == "while" and sum(inner.values()) and notes is not None:
      notes.add("a while loop's body is counted once (its trip count is not static)")
    total += inner
  return total


# ----------------------------------------------------------------------------- stand-ins for the device image


class StandInConfig:
  """``ml_collections.ConfigDict`` as far as ``configs/*.py`` and the library use it: attributes, ``to_dict``."""

  def to_dict(self) -> dict[str, Any]:
    return {k: v.to_dict() if isinstance(v, StandInConfig) else v for k, v in vars(self).items()}

  def __repr__(self) -> str:
    return f"StandInConfig({self.to_dict()!r})"


def _importable(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


def install_stand_ins() -> list[str]:
  """A stand-in for ml_collections where it is not installed (the GPU image has neither it nor clu); the notes."""
  notes = []
  if not _importable("ml_collections"):
    mc = types.ModuleType("ml_collections")
    cd = types.ModuleType("ml_collections.config_dict")
    mc.ConfigDict = cd.ConfigDict = StandInConfig
    cd.placeholder = lambda field_type=None, required=False: None
    mc.config_dict = cd
    sys.modules.update({"ml_collections": mc, "ml_collections.config_dict": cd})
    notes.append("ml_collections is not installed: configs/*.py read through an attribute-only stand-in ConfigDict")
  if not _importable("clu"):
    notes.append("clu is not installed: not needed (only a training stage's TensorBoard writer imports it)")
  return notes


# ----------------------------------------------------------------------------- the run: settings, output


@dataclasses.dataclass
class Settings:
  size: str
  batch: int
  steps: int
  warmup: int
  img: dict[str, int]
  official: str | None


class Report:
  """Lines as they come (flushed), every result in one JSON document (rewritten after each part)."""

  def __init__(self, path: str):
    self.path = path
    self.data: dict[str, Any] = {"failures": [], "elapsed_s": {}}
    self.t0 = time.perf_counter()

  def line(self, text: str) -> None:
    print(f"[{time.perf_counter() - self.t0:7.1f}s] {text}", flush=True)

  def fail(self, what: str, why: str) -> None:
    self.data["failures"].append(f"{what}: {why}")
    self.line(f"FAIL {what}: {why}")

  def write(self) -> None:
    self.data["ok"] = not self.data["failures"]
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    with open(self.path, "w") as f:
      json.dump(self.data, f, indent=1, default=_json_default)


def _json_default(x: Any) -> Any:
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  return str(x)


def _error(e: BaseException) -> str:
  return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def _gib(n: float | None) -> float | None:
  return None if n is None else round(n / 2**30, 3)


# ----------------------------------------------------------------------------- configs and models


def paper_config(family: str) -> Any:
  """A fresh config of ``configs/<FAMILIES[family]>.py`` (ml_collections or the stand-in)."""
  return importlib.import_module(f"configs.{FAMILIES[family]}").get_config()


def run_config(family: str, settings: Settings) -> Any:
  """The paper config of ``family`` at the run's input size (and, tiny, its smaller ResNet)."""
  config = paper_config(family)
  config.dataset.crop_size = settings.img[family]
  if settings.size == "tiny" and family in TINY_BACKBONE:
    config.model.backbone = TINY_BACKBONE[family]
  return config


def train_modules() -> tuple[types.ModuleType, type]:
  """``megraph_jax.train.stage`` and ``TrainState`` (imported on use: after :func:`install_stand_ins`, which the
  configs it is given need)."""
  from megraph_jax.train import stage  # pylint: disable=import-outside-toplevel
  from megraph_jax.train.train_state import TrainState  # pylint: disable=import-outside-toplevel

  return stage, TrainState


def build_model(config: Any, stage: int, family: str, settings: Settings) -> tuple[Any, str]:
  """The model of ``stage`` of a :func:`run_config` (tiny Swin: reduced), and how the output describes it."""
  spec = ModelSpec.from_config(config, stage)
  if settings.size == "full" or family != "swin":
    return model_factory.build_from_config(config, stage), f"{spec.backbone} {spec.img_size}px"
  from megraph_jax.models.swin import swin  # pylint: disable=import-outside-toplevel

  dtype, seed = model_factory.DTYPES[spec.dtype], config.seed
  backbone = swin(spec.backbone, img_size=spec.img_size, dtype=dtype, rngs=nnx.Rngs(params=seed, dropout=seed + 1),
                  **TINY_SWIN)  # fmt: skip
  cls = model_factory.MODELS[(spec.head, spec.stage)]
  fields = {f: getattr(spec, f) for f in cls.SPEC_FIELDS}
  model = cls(spec.backbone, num_aus=spec.num_aus, img_size=spec.img_size, dtype=dtype, backbone_module=backbone,
              rngs=nnx.Rngs(params=seed, dropout=seed + 1), **fields)  # fmt: skip
  shape = ", ".join(f"{k} {v}" for k, v in TINY_SWIN.items())
  return model, f"{spec.backbone} reduced ({shape}) {spec.img_size}px"


@dataclasses.dataclass
class Cell:
  """One (config, stage, dtype): its jitted steps as training builds them, their executables, state and batch."""

  family: str
  stage: int
  dtype: str
  model: str = ""
  state: Any = None
  train_batch: Any = None
  eval_batch: Any = None
  train_fn: Any = None
  eval_fn: Any = None
  train: Any = None  # compiled
  evaluate: Any = None
  train_flops: int = 0
  train_float32_share: float = 0.0  # of the train step's matmul/conv FLOPs, with float32 operands
  eval_flops: int = 0
  train_memory: dict[str, Any] = dataclasses.field(default_factory=dict)
  eval_memory: dict[str, Any] = dataclasses.field(default_factory=dict)
  times: dict[str, float] = dataclasses.field(default_factory=dict)
  notes: set[str] = dataclasses.field(default_factory=set)

  @property
  def name(self) -> str:
    return f"{FAMILIES[self.family]} stage {self.stage} {self.dtype}"


def random_batches(batch: int, img: int, num_aus: int, seed: int = 0) -> tuple[dict, dict]:
  """A training batch {image (uint8 pixels), jitter, label, relation} and an eval batch {image (normalised float32),
  label, relation, mask} as the input pipelines make them: the train step does the colour jitter and normalisation
  (``device_augment.model_images``), so it is timed with them."""
  from megraph_jax import task  # pylint: disable=import-outside-toplevel
  from megraph_jax.data import device_augment  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  labels = (rng.random((batch, num_aus)) < 0.3).astype(np.float32)
  pixels = rng.integers(0, 256, (batch, img, img, 3)).astype(np.uint8)
  jitter = device_augment.jitter_slots(rng.uniform(0.6, 1.4, (batch, 3)), rng.integers(0, 6, batch))
  targets = {"label": labels, "relation": task.relation_labels(labels)}
  train = {"image": pixels, "jitter": jitter, **targets}
  evaluate = {"image": np.asarray(device_augment.normalise(pixels / np.float32(255))), **targets}
  return train, {**evaluate, "mask": np.ones(batch, np.float32)}


def _memory(compiled: Any) -> dict[str, Any]:
  """XLA's compiled memory of one executable (GiB): temporaries, arguments, outputs, aliased (donated)."""
  try:
    m = compiled.memory_analysis()
  except Exception as e:  # not every backend implements it
    return {"error": _error(e)}
  if m is None:
    return {}
  out = {
    "temp_gib": _gib(m.temp_size_in_bytes),
    "argument_gib": _gib(m.argument_size_in_bytes),
    "output_gib": _gib(m.output_size_in_bytes),
    "alias_gib": _gib(m.alias_size_in_bytes),
  }
  total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
  return {**out, "total_gib": _gib(total)}


def build_cell(family: str, stage: int, dtype: str, settings: Settings) -> Cell:
  """Model, AdamW train state, jitted steps and batch of one cell exactly as ``train_stage`` builds them."""
  stage_mod, TrainState = train_modules()
  cell = Cell(family, stage, dtype)
  t0 = time.perf_counter()
  config = run_config(family, settings)
  config.model.dtype = dtype
  model, cell.model = build_model(config, stage, family, settings)
  tx, _ = stage_mod.make_optimizer(config, stage, nnx.state(model, nnx.Param), total_steps=1000)
  graphdef, state = nnx.split(TrainState(model, tx))
  mesh = sharding.make_mesh()
  sharding.check_batch_size(settings.batch, mesh)
  state_sharding = sharding.state_shardings(state, mesh, config.sharding.params, config.sharding.fsdp_min_size)
  cell.state = jax.device_put(state, state_sharding)
  eval_graphdef = stage_mod.eval_graphdef(model)
  n = model.num_aus
  weights = np.random.default_rng(1).uniform(0.5, 2.0, n).astype(np.float32)
  class_weights = jnp.asarray(weights * n / weights.sum())  # as task.class_weights: positive, summing to N
  lam = float(config.stage2.lam) if stage == 2 else 0.0
  options = stage_mod.step_options(config)
  cell.train_fn = stage_mod.jit_train_step(graphdef, class_weights, lam, mesh, state_sharding, **options)
  cell.eval_fn = stage_mod.jit_eval_step(eval_graphdef, class_weights, mesh, state_sharding["model"], **options)
  train, evaluate = random_batches(settings.batch, settings.img[family], n)
  data = sharding.data_sharded(mesh)
  cell.train_batch, cell.eval_batch = sharding.put_batch(train, data), sharding.put_batch(evaluate, data)
  jax.block_until_ready((cell.state, cell.train_batch, cell.eval_batch))
  cell.times["build_s"] = time.perf_counter() - t0
  return cell


def compile_cell(cell: Cell) -> None:
  """Traces (FLOPs from the jaxpr), lowers and compiles both steps; times each."""
  t0 = time.perf_counter()
  traced = cell.train_fn.trace(cell.state, cell.train_batch)
  by_dtype = flops_by_dtype(traced.jaxpr, cell.notes)
  cell.train_flops = sum(by_dtype.values())
  cell.train_float32_share = by_dtype["float32"] / max(cell.train_flops, 1)
  lowered = traced.lower()
  t1 = time.perf_counter()
  cell.train = lowered.compile()
  t2 = time.perf_counter()
  traced = cell.eval_fn.trace(cell.state["model"], cell.eval_batch)
  cell.eval_flops = jaxpr_flops(traced.jaxpr, cell.notes)
  lowered = traced.lower()
  t3 = time.perf_counter()
  cell.evaluate = lowered.compile()
  t4 = time.perf_counter()
  cell.times.update(train_trace_s=t1 - t0, train_compile_s=t2 - t1, eval_trace_s=t3 - t2, eval_compile_s=t4 - t3)
  cell.train_memory, cell.eval_memory = _memory(cell.train), _memory(cell.evaluate)


def run_cell_once(cell: Cell, batch: int) -> dict[str, Any]:
  """One train step and one eval step; raises unless the loss and the state are finite and every example counted."""
  t0 = time.perf_counter()
  cell.state, metrics = cell.train(cell.state, cell.train_batch)
  metrics = jax.device_get(metrics)
  t1 = time.perf_counter()
  out = jax.device_get(cell.evaluate(cell.state["model"], cell.eval_batch))
  t2 = time.perf_counter()
  cell.times.update(train_first_step_s=t1 - t0, eval_first_step_s=t2 - t1)
  loss = float(metrics["total"])
  if not math.isfinite(loss) or float(metrics["finite_state"]) != 1.0:
    raise FloatingPointError(f"train step: loss {loss}, finite_state {float(metrics['finite_state'])}")
  if int(round(float(out["n"]))) != batch or not np.isfinite(float(out["wa_sum"])):
    raise ValueError(f"eval step: n {float(out['n'])} for a batch of {batch}, wa_sum {float(out['wa_sum'])}")
  return {"loss": loss, "grad_norm": float(metrics["grad_norm"]), "eval_wa": float(out["wa_sum"]) / batch}


# ----------------------------------------------------------------------------- part 1: compile


def part_compile(settings: Settings, report: Report, cells: dict[tuple, Cell]) -> None:
  rows = report.data.setdefault("compile", [])
  keep = {(f, 2, d) for f in FAMILIES for d in DTYPES}  # what throughput reuses
  for family in FAMILIES:
    for stage in (1, 2):
      for dtype in DTYPES:
        row: dict[str, Any] = {"config": FAMILIES[family], "stage": stage, "dtype": dtype, "batch": settings.batch}
        rows.append(row)
        try:
          cell = build_cell(family, stage, dtype, settings)
          row["model"] = cell.model
          compile_cell(cell)
          row.update(run_cell_once(cell, settings.batch))
          row.update(ok=True, train_gflop_per_image=cell.train_flops / settings.batch / 1e9)
          row.update(train_float32_flop_share=round(cell.train_float32_share, 4))
          row.update({k: round(v, 3) for k, v in cell.times.items()})
          row.update(train_memory=cell.train_memory, eval_memory=cell.eval_memory, flop_notes=sorted(cell.notes))
          report.line(
            f"compile {cell.name} ({cell.model}, batch {settings.batch}): ok; train trace "
            f"{cell.times['train_trace_s']:.1f}s + compile {cell.times['train_compile_s']:.1f}s, eval compile "
            f"{cell.times['eval_compile_s']:.1f}s, loss {row['loss']:.4f}, float32 FLOP share "
            f"{cell.train_float32_share:.1%}"
          )
          if (family, stage, dtype) in keep:
            cells[(family, stage, dtype)] = cell
        except Exception as e:  # one failing cell must not hide the others
          row.update(ok=False, error=_error(e), traceback=traceback.format_exc(limit=8))
          report.fail(f"compile {FAMILIES[family]} stage {stage} {dtype}", _error(e))


# ----------------------------------------------------------------------------- part 2: predict


def _torch_first() -> None:
  """PyTorch's side (torch, torchvision, which loads triton) before anything else runs: a later ``import triton``
  (torchvision, torch._dynamo, e.g. under torch.optim) segfaults in some environments once TensorFlow is loaded
  (tests/conftest.py), and here once JAX has run. Called when this run uses PyTorch or TensorFlow."""
  for name in ("torch", "torchvision"):
    if _importable(name):
      with contextlib.suppress(Exception):
        importlib.import_module(name)


def _rows_by_file(path: str) -> dict[str, collections.Counter]:
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for r in rows:
    out[os.path.basename(r["file"])][r["status"]] += 1
  return out


def part_predict(settings: Settings, report: Report) -> None:
  """The predict CLI on a photo and a clip, without and (where MTCNN imports) with face alignment."""
  with tempfile.TemporaryDirectory(prefix="device_check_predict_") as tmp:
    _predict_in(tmp, settings, report)


def _predict_in(tmp: str, settings: Settings, report: Report) -> None:
  from PIL import Image  # pylint: disable=import-outside-toplevel

  from megraph_jax.data import synthetic_video  # pylint: disable=import-outside-toplevel
  from megraph_jax.predict import predictor  # pylint: disable=import-outside-toplevel

  result = report.data.setdefault("predict", {"runs": []})
  tiny = settings.size == "tiny"
  frames = 3 if tiny else 8
  width, height, face = (256, 192, 120) if tiny else (640, 360, 150)
  photo = os.path.join(tmp, "photo.png")
  Image.fromarray(next(synthetic_video.frames(1, width=width, height=height, face_size=face, seed=1))).save(photo)
  video = synthetic_video.write(os.path.join(tmp, "clip.mp4"), frames, width=width, height=height, face_size=face)
  config = run_config("resnet", settings)
  spec = ModelSpec.from_config(config, 2)
  ckpt = loader.save(model_factory.build(spec, seed=config.seed), os.path.join(tmp, "model"), spec=spec)
  result.update(checkpoint=f"{spec.backbone} stage 2 {spec.img_size}px, random init (loader.save)", frames=frames)
  modes = [("no-align", ["--no-align"])]
  if _importable("tensorflow") and _importable("mtcnn"):
    modes.append(("faces (MTCNN)", []))
  else:
    result["faces"] = "skipped: TensorFlow or mtcnn is not installed (MTCNN face detection needs both)"
    report.line(f"predict faces: {result['faces']}")
  for mode, flags in modes:
    out = os.path.join(tmp, f"{mode.split()[0]}.csv")
    argv = ["--checkpoint", ckpt, photo, video, "-o", out, "--no-progress", "--batch-size", "4", *flags]
    run: dict[str, Any] = {"mode": mode, "argv": argv}
    result["runs"].append(run)
    try:
      t0 = time.perf_counter()
      run["exit"] = predictor.main(argv)
      run["seconds"] = round(time.perf_counter() - t0, 2)
      rows = _rows_by_file(out) if os.path.exists(out) else {}
      run["rows"] = {k: dict(v) for k, v in rows.items()}
      got_photo, got_video = sum(rows.get("photo.png", {}).values()), sum(rows.get("clip.mp4", {}).values())
      if mode == "no-align":  # the whole image: exactly one row per image and per frame, all ok
        ok_rows = rows.get("photo.png", {}).get("ok", 0) == 1 and rows.get("clip.mp4", {}).get("ok", 0) == frames
        ok_rows = ok_rows and got_photo == 1 and got_video == frames
      else:  # a row per face found, a 'no_face' row where none is: at least one per image and frame
        ok_rows = got_photo >= 1 and got_video >= frames
      run["ok"] = run["exit"] == 0 and ok_rows
      report.line(f"predict {mode}: exit {run['exit']}, rows photo {got_photo}, video {got_video} of {frames} "
                  f"frames ({run['seconds']}s): {'ok' if run['ok'] else 'WRONG'}")  # fmt: skip
      if not run["ok"]:
        report.fail(f"predict {mode}", f"exit {run['exit']}, rows {run['rows']}")
    except Exception as e:
      run.update(ok=False, error=_error(e), traceback=traceback.format_exc(limit=8))
      report.fail(f"predict {mode}", _error(e))


# ----------------------------------------------------------------------------- part 3: parity


def part_parity(settings: Settings, report: Report) -> None:
  import golden_cases as gc  # pylint: disable=import-outside-toplevel

  rows = report.data.setdefault("parity", {"cases": [], "atol_highest": PARITY_ATOL})["cases"]
  cpu = jax.default_backend() == "cpu"
  full_cases = list(gc.OPENGRAPHAU_FULL) if settings.size == "full" else list(gc.FAST_FULL)
  skipped = [n for n in gc.OPENGRAPHAU_FULL if n not in full_cases]
  if skipped:
    report.data["parity"]["skipped"] = {n: "224 px whole models: --size full" for n in skipped}
  precisions = ("highest",) if cpu else ("highest", "default")
  if cpu:
    report.data["parity"]["default_note"] = (
      "not computed: XLA:CPU computes float32 products in full precision at every setting ('default' = 'highest')"
    )

  def case(name: str, run: Callable[[], np.ndarray], want: np.ndarray) -> None:
    row: dict[str, Any] = {"case": name}
    rows.append(row)
    try:
      for p in precisions:
        with numerics.compute_settings(precision=p):
          row[p] = float(np.abs(np.asarray(run(), np.float64) - want).max())
      row["ok"] = row["highest"] < PARITY_ATOL
      shown = ", ".join(f"{p} {row[p]:.2e}" for p in precisions)
      report.line(f"parity {name}: max |au_probs - official| {shown}: {'ok' if row['ok'] else 'FAILED'}")
      if not row["ok"]:
        report.fail(f"parity {name}", f"highest {row['highest']:.2e} >= {PARITY_ATOL}")
    except Exception as e:
      row.update(ok=False, error=_error(e), traceback=traceback.format_exc(limit=8))
      report.fail(f"parity {name}", _error(e))

  for name in gc.MEGRAPH_HEADS:
    try:
      cfg, sd, rest = gc.megraph_head_case(name)
      model = gc.megraph_head_model(cfg)
      gc.load_megraph_head(model, cfg, sd, name)
      model.eval()
    except Exception as e:
      rows.append({"case": f"megraph_head/{name}", "ok": False, "error": _error(e)})
      report.fail(f"parity megraph_head/{name}", _error(e))
      continue
    case(f"megraph_head/{name}", lambda m=model, x=rest["x"]: gc.run_head(m, x)["au_probs"], rest["eval/au_probs"])
  golden = gc.read_opengraphau()
  from megraph_jax.weights.common import StateDict  # pylint: disable=import-outside-toplevel
  from megraph_jax.weights.opengraphau import load_opengraphau_head  # pylint: disable=import-outside-toplevel

  for name in gc.OPENGRAPHAU_HEADS:
    cfg, sd = gc.opengraphau_head_case(golden, name)
    model = gc.opengraphau_head_model(cfg)
    state = StateDict(sd, source=name)
    load_opengraphau_head(state, model)
    state.check_all_used()
    model.eval()
    x = golden[f"head/{name}/x"]
    case(f"opengraphau_head/{name}", lambda m=model, x=x: gc.run_head(m, x)["au_probs"], golden[f"head/{name}/eval"])
  with tempfile.TemporaryDirectory(prefix="device_check_golden_") as tmp:
    for name in full_cases:
      try:
        model, spec, x, want = gc.load_full_case(golden, name, tmp)
      except Exception as e:  # e.g. no PyTorch to write the official .pth
        rows.append({"case": f"opengraphau_full/{name}", "ok": False, "error": _error(e)})
        report.fail(f"parity opengraphau_full/{name}", _error(e))
        continue
      case(f"opengraphau_full/{name}", lambda m=model, x=x, d=spec.dtype: gc.run_full(m, x, d), want)
      del model


# ----------------------------------------------------------------------------- part 4: profile

# Op / kernel names of matrix products: XLA (convolution, dot, cuBLAS/cuDNN custom calls, Triton GEMM fusions) and the
# cuBLAS/cuDNN/CUTLASS kernels themselves.
MATMUL_WORDS = ("convolution", "gemm", "dot", "cublas", "cudnn", "matmul", "xmma", "cutlass")


def _latest_perfetto(trace_dir: str) -> str:
  """The newest ``perfetto_trace.json.gz`` that ``jax.profiler.trace(create_perfetto_trace=True)`` wrote."""
  found = sorted(
    glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True), key=os.path.getmtime
  )
  if not found:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  return found[-1]


def op_times(trace_path: str) -> dict[str, Any]:
  """Device time per op from a Perfetto trace of jax.profiler: ``{"where", "busy_us", "span_us", "ops": {name: us}}``.

  On a GPU the ops are the device's "XLA Ops" line (HLO ops: fusions, convolutions, custom calls), or its streams'
  kernels where there is no such line; on a CPU, XLA:CPU's executor threads. ``busy_us`` is the union of those
  events' intervals (time the device did something), ``span_us`` from the first start to the last end.
  """
  with gzip.open(trace_path, "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  procs = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {
    (e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"
  }
  spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
  device = {pid for pid, name in procs.items() if name.startswith("/device:")}

  def line(e: dict) -> str:
    return threads.get((e["pid"], e["tid"]), "")

  chosen = [e for e in spans if e["pid"] in device and line(e) == "XLA Ops"]
  where = "device XLA Ops"
  if not chosen:
    chosen = [e for e in spans if e["pid"] in device and line(e).startswith("Stream")]
    where = "device streams"
  if not chosen:
    chosen = [e for e in spans if e["pid"] not in device and line(e).startswith("tf_XLA") and "::" not in e["name"]]
    where = "host XLA:CPU threads"
  ops: collections.Counter = collections.Counter()
  intervals = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in chosen)
  busy, end = 0.0, -math.inf
  for a, b in intervals:
    if b > end:
      busy += b - max(a, end)
      end = b
  for e in chosen:
    ops[e["name"]] += float(e["dur"])
  span = intervals[-1][1] - intervals[0][0] if intervals else 0.0
  return {"where": where, "busy_us": busy, "span_us": span, "ops": dict(ops)}


def profile_cell(cell: Cell, settings: Settings, trace_dir: str, top: int = 15) -> dict[str, Any]:
  """Profiles ``settings.steps`` train steps of a compiled cell (after its warm-up) and summarises :func:`op_times`."""
  box = {"state": cell.state}
  for _ in range(settings.warmup):
    box["state"], _ = cell.train(box["state"], cell.train_batch)
  jax.block_until_ready(box["state"])
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    t0 = time.perf_counter()
    for _ in range(settings.steps):
      box["state"], metrics = cell.train(box["state"], cell.train_batch)
    jax.block_until_ready((box["state"], metrics))
    wall = time.perf_counter() - t0
  cell.state = box["state"]
  times = op_times(_latest_perfetto(trace_dir))
  total = sum(times["ops"].values()) or 1.0
  matmul = sum(t for name, t in times["ops"].items() if any(w in name.lower() for w in MATMUL_WORDS))
  ranked = sorted(times["ops"].items(), key=lambda kv: -kv[1])[:top]
  return {
    "config": FAMILIES[cell.family],
    "model": cell.model,
    "dtype": cell.dtype,
    "steps": settings.steps,
    "trace_dir": trace_dir,
    "read_from": times["where"],
    "wall_ms_per_step": round(1e3 * wall / settings.steps, 3),
    "busy_ms_per_step": round(times["busy_us"] / 1e3 / settings.steps, 3),
    "distinct_ops": len(times["ops"]),
    "matmul_conv_share": round(matmul / total, 4),
    "top_ops": [
      {"op": name, "ms_per_step": round(t / 1e3 / settings.steps, 4), "share": round(t / total, 4)}
      for name, t in ranked
    ],
  }


def part_profile(settings: Settings, report: Report, cells: dict[tuple, Cell], out: str) -> None:
  rows = report.data.setdefault("profile", [])
  for family in FAMILIES:
    name = f"{FAMILIES[family]} stage 2 bfloat16"
    try:
      cell = cells.get((family, 2, "bfloat16"))
      if cell is None:
        cell = cells[(family, 2, "bfloat16")] = build_cell(family, 2, "bfloat16", settings)
        compile_cell(cell)
      trace_dir = os.path.join(os.path.dirname(os.path.abspath(out)), f"profile_{FAMILIES[family]}")
      row = profile_cell(cell, settings, trace_dir)
      rows.append(row)
      report.line(
        f"profile {name}: {row['wall_ms_per_step']:.1f} ms/step wall, device busy {row['busy_ms_per_step']:.1f} ms "
        f"({row['read_from']}), {row['distinct_ops']} distinct ops, matmul/conv kernels "
        f"{row['matmul_conv_share']:.0%} of op time; trace {trace_dir}"
      )
      for op in row["top_ops"][:8]:
        report.line(f"  {op['share']:6.1%} {op['ms_per_step']:8.3f} ms  {op['op'][:90]}")
    except Exception as e:
      rows.append({"config": FAMILIES[family], "error": _error(e)})
      report.fail(f"profile {name}", _error(e))


# ----------------------------------------------------------------------------- part 5: throughput


def matmul_peak(n: int, dtype: str, precision: str, reps: int) -> float:
  """TFLOP/s of an ``n``^3 matmul on the default device (jitted, after a warm-up; ``reps`` timed back to back)."""
  k1, k2 = jax.random.split(jax.random.key(0))
  a, b = jax.random.normal(k1, (n, n), dtype), jax.random.normal(k2, (n, n), dtype)
  f = jax.jit(numerics.traced_with(lambda a, b: a @ b, precision=precision))
  f(a, b).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(reps):
    out = f(a, b)
  out.block_until_ready()
  return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def _timed(step: Callable[[], Any], warmup: int, steps: int) -> float:
  """Seconds per call of ``step`` (dispatched back to back, waited for at the end) after ``warmup`` calls."""
  out = None
  for _ in range(warmup):
    out = step()
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  for _ in range(steps):
    out = step()
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps


def _device_memory() -> dict[str, Any]:
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:
    stats = {}
  return {"peak_gib_so_far": _gib(stats.get("peak_bytes_in_use")), "in_use_gib": _gib(stats.get("bytes_in_use"))}


def time_cell(cell: Cell, settings: Settings, peaks: dict[str, float]) -> dict[str, Any]:
  """Train and eval throughput of a compiled cell, its FLOPs, TFLOP/s, utilisation and memory."""
  box = {"state": cell.state}

  def train():
    box["state"], metrics = cell.train(box["state"], cell.train_batch)
    return box["state"], metrics

  t_train = _timed(train, settings.warmup, settings.steps)
  cell.state = box["state"]
  model_state = cell.state["model"]
  t_eval = _timed(lambda: cell.evaluate(model_state, cell.eval_batch), settings.warmup, settings.steps)
  b = settings.batch
  peak = peaks.get("bfloat16" if cell.dtype == "bfloat16" else "float32_default")
  row = {"model": cell.model, "dtype": cell.dtype, "batch": b, "steps": settings.steps, "warmup": settings.warmup}
  for kind, t, flops in (("train", t_train, cell.train_flops), ("eval", t_eval, cell.eval_flops)):
    tflops = flops / t / 1e12
    row.update({
      f"{kind}_ms_per_step": round(1e3 * t, 3),
      f"{kind}_img_per_s": round(b / t, 2),
      f"{kind}_gflop_per_image": round(flops / b / 1e9, 3),
      f"{kind}_tflop_per_s": round(tflops, 4),
      f"{kind}_utilisation": round(tflops / peak, 4) if peak else None,
    })  # fmt: skip
  row.update(train_memory=cell.train_memory, eval_memory=cell.eval_memory, device_memory=_device_memory())
  row["flop_notes"] = sorted(cell.notes)
  return row


def official_rows(path: str, backbone: str, img: int, settings: Settings) -> list[dict[str, Any]]:
  """The official stage-2 model's train / eval throughput in fp32 (as shipped) and bf16 autocast + channels_last on
  CUDA when available (else the CPU), stepped as ``benchmarks/throughput.py`` steps it (its loss, torch AdamW)."""
  import torch  # pylint: disable=import-outside-toplevel

  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  return [_official_row(torch, dev, path, backbone, img, settings, bf16) for bf16 in (False, True)]


def _official_row(torch: Any, dev: Any, path: str, backbone: str, img: int, settings: Settings, bf16: bool) -> dict:
  from check_official_parity import _official_model  # pylint: disable=import-outside-toplevel
  from make_golden import _CpuAsDevice0  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  b = settings.batch
  fmt = torch.channels_last if bf16 else torch.contiguous_format
  net = _official_model(path, 2, backbone, 12, 4).to(dev, memory_format=fmt)
  opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=5e-4)
  images = torch.randn(b, 3, img, img, device=dev).contiguous(memory_format=fmt)
  labels = (torch.rand(b, 12, device=dev) > 0.6).float()
  rel = (2 * labels[:, :, None] + labels[:, None, :]).long().view(b, -1)
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

  def forward():
    shim = _CpuAsDevice0(torch) if dev.type == "cpu" else contextlib.nullcontext()  # its GNN binds edges on CUDA
    cast = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with shim, cast:
      return net(images)

  def train():
    net.train()
    probs, edges = forward()
    loss = -(labels * torch.log(probs.float().clamp(min=1e-8))).mean()
    loss = loss + 0.05 * torch.nn.functional.cross_entropy(edges.float().reshape(-1, 4), rel.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()

  def evaluate():
    net.eval()
    with torch.no_grad():
      forward()

  if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  mode = "bf16 autocast + channels_last" if bf16 else "fp32"
  row: dict[str, Any] = {"model": f"official {backbone} {img}px", "mode": mode, "device": str(dev), "batch": b}
  for kind, fn in (("train", train), ("eval", evaluate)):
    for _ in range(settings.warmup):
      fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(settings.steps):
      fn()
    sync()
    t = (time.perf_counter() - t0) / settings.steps
    row.update({f"{kind}_ms_per_step": round(1e3 * t, 3), f"{kind}_img_per_s": round(b / t, 2)})
  if dev.type == "cuda":
    row["peak_gib"] = _gib(torch.cuda.max_memory_allocated())
  return row


def part_throughput(settings: Settings, report: Report, cells: dict[tuple, Cell]) -> None:
  result = report.data.setdefault("throughput", {"rows": [], "official": []})
  tiny = settings.size == "tiny"
  n, reps = (512, 5) if tiny else (8192, 20)
  peaks: dict[str, float] = {}
  for key, dtype, precision in (("bfloat16", "bfloat16", "default"), ("float32_default", "float32", "default"),
                                ("float32_highest", "float32", "highest")):  # fmt: skip
    try:
      peaks[key] = round(matmul_peak(n, dtype, precision, reps), 4)
      report.line(f"throughput peak: {n}^3 {dtype} matmul at precision {precision!r}: {peaks[key]:.2f} TFLOP/s")
    except Exception as e:
      report.fail(f"throughput peak {key}", _error(e))
  result["peak_tflop_per_s"] = {**peaks, "matmul_size": n}
  result["memory_note"] = (
    "device peak_bytes_in_use is the process's peak so far (it cannot be reset): a row's own peak only where it "
    "exceeds every earlier part's; train_memory / eval_memory are XLA's compiled sizes of that row's executables"
  )
  result["flops_note"] = "2 x multiply-adds of every dot_general and convolution in the step's jaxpr"
  for family in FAMILIES:
    for dtype in DTYPES:
      name = f"{FAMILIES[family]} stage 2 {dtype}"
      try:
        cell = cells.pop((family, 2, dtype), None)
        if cell is None:
          cell = build_cell(family, 2, dtype, settings)
          compile_cell(cell)
        row = {"config": FAMILIES[family], **time_cell(cell, settings, peaks)}
        result["rows"].append(row)
        report.line(
          f"throughput {name} ({cell.model}, batch {settings.batch}): train {row['train_img_per_s']:.1f} img/s "
          f"({row['train_ms_per_step']:.1f} ms, {row['train_gflop_per_image']:.2f} GFLOP/img, "
          f"{row['train_tflop_per_s']:.2f} TFLOP/s, util {row['train_utilisation']}), eval "
          f"{row['eval_img_per_s']:.1f} img/s ({row['eval_ms_per_step']:.1f} ms, util {row['eval_utilisation']}); "
          f"compiled train {row['train_memory'].get('total_gib')} GiB, device peak so far "
          f"{row['device_memory']['peak_gib_so_far']} GiB"
        )
        del cell
      except Exception as e:
        result["rows"].append({"config": FAMILIES[family], "dtype": dtype, "error": _error(e)})
        report.fail(f"throughput {name}", _error(e))
  if settings.official:
    _official_throughput(settings, report, result)


def _official_throughput(settings: Settings, report: Report, result: dict[str, Any]) -> None:
  if not _importable("torch"):
    result["official_note"] = "skipped: PyTorch is not installed"
    report.line(f"throughput official: {result['official_note']}")
    return
  ours = {(r["config"], r.get("dtype")): r for r in result["rows"] if "error" not in r}
  for family in FAMILIES:
    config = run_config(family, settings)
    backbone, img = config.model.backbone, settings.img[family]
    if settings.size == "tiny" and family == "swin":
      result["official"].append({"config": FAMILIES[family], "note": "skipped: the tiny Swin has no official twin"})
      report.line("throughput official swin: skipped (the tiny run's reduced Swin has no official counterpart)")
      continue
    try:
      for row in official_rows(settings.official, backbone, img, settings):
        mine = ours.get((FAMILIES[family], "float32" if row["mode"] == "fp32" else "bfloat16"))
        if mine:
          row["ours_over_official_train"] = round(mine["train_img_per_s"] / row["train_img_per_s"], 3)
          row["ours_over_official_eval"] = round(mine["eval_img_per_s"] / row["eval_img_per_s"], 3)
        result["official"].append({"config": FAMILIES[family], **row})
        report.line(
          f"throughput official {backbone} {row['mode']} ({row['device']}): train {row['train_img_per_s']:.1f} "
          f"img/s, eval {row['eval_img_per_s']:.1f} img/s; ours / official: train "
          f"{row.get('ours_over_official_train')}, eval {row.get('ours_over_official_eval')}"
        )
    except Exception as e:
      result["official"].append({"config": FAMILIES[family], "error": _error(e)})
      report.fail(f"throughput official {backbone}", _error(e))


# ----------------------------------------------------------------------------- main


def _environment(settings: Settings, notes: list[str]) -> dict[str, Any]:
  versions = {}
  for dist in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch", "opencv-python-headless"):
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      versions[dist] = importlib.metadata.version(dist)
  return {
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "device_kind": jax.devices()[0].device_kind,
    "python": platform.python_version(),
    "versions": versions,
    "missing": [m for m in OPTIONAL if not _importable(m)],
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "compilation_cache": jax.config.jax_compilation_cache_dir or "",
    "size": settings.size,
    "batch": settings.batch,
    "img": settings.img,
    "steps": settings.steps,
    "warmup": settings.warmup,
    "notes": notes,
  }


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", choices=("tiny", "full"), default=None, help="default: full off CPU, tiny on CPU")
  p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {','.join(PARTS)}")
  p.add_argument("--steps", type=int, default=None, help="timed steps per throughput row (full 10, tiny 1)")
  p.add_argument("--warmup", type=int, default=None, help="untimed steps before them (full 3, tiny 1)")
  p.add_argument("--batch", type=int, default=None, help="global batch of every step (full 64, official; tiny 2)")
  p.add_argument("--official", default=None, help="a checkout of CVI-SZU/ME-GraphAU: time the official model too")
  p.add_argument("--out", default="device_check.json", help="the JSON report (default device_check.json)")
  return p


@contextlib.contextmanager
def _part(report: Report, name: str) -> Iterator[None]:
  report.line(f"== {name}")
  t0 = time.perf_counter()
  try:
    yield
  except Exception as e:  # a part that breaks as a whole is one failure; the next part runs
    report.data.setdefault("errors", {})[name] = traceback.format_exc(limit=12)
    report.fail(name, _error(e))
  finally:
    report.data["elapsed_s"][name] = round(time.perf_counter() - t0, 2)
    report.line(f"== {name}: {report.data['elapsed_s'][name]:.1f} s")
    report.write()


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the selected parts; returns 0 when every check passed, 1 otherwise (the JSON says which failed)."""
  args = _parser().parse_args(argv)
  parts = [p.strip() for p in args.only.split(",") if p.strip()]
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    _parser().error(f"--only: unknown part(s) {unknown}; choose from {','.join(PARTS)}")
  size = args.size or ("tiny" if jax.default_backend() == "cpu" else "full")
  tiny = size == "tiny"
  settings = Settings(
    size=size,
    batch=args.batch or (2 if tiny else 64),
    steps=args.steps or (1 if tiny else 10),
    warmup=args.warmup if args.warmup is not None else (1 if tiny else 3),
    img=dict(TINY_IMG) if tiny else {f: 224 for f in FAMILIES},
    official=args.official,
  )
  notes = install_stand_ins()
  if tiny:
    notes.append(
      f"tiny: ResNet-50 as {TINY_BACKBONE['resnet']} at {TINY_IMG['resnet']}px; Swin-B as a reduced Swin "
      f"({TINY_SWIN}) at {TINY_IMG['swin']}px (the 4-stage Swins need 224px); golden whole models at 64px only"
    )
  if "parity" in parts or args.official or (_importable("tensorflow") and "predict" in parts):
    _torch_first()  # parity writes .pth files, --official runs the official model, face mode loads TensorFlow
  report = Report(args.out)
  report.data["environment"] = env = _environment(settings, notes)
  report.line(
    f"device check ({size}): {env['backend']} {env['device_kind']} x{len(env['devices'])}, jax "
    f"{env['versions'].get('jax')}, batch {settings.batch}, parts {','.join(parts)}; not installed: "
    f"{', '.join(env['missing']) or 'none'}; XLA_FLAGS={env['xla_flags']!r}"
  )
  for note in notes:
    report.line(f"note: {note}")
  cells: dict[tuple, Cell] = {}
  if "compile" in parts:
    with _part(report, "compile"):
      part_compile(settings, report, cells)
  if "predict" in parts:
    with _part(report, "predict"):
      part_predict(settings, report)
  if "parity" in parts:
    with _part(report, "parity"):
      part_parity(settings, report)
  if "profile" in parts:
    with _part(report, "profile"):
      part_profile(settings, report, cells, args.out)
  if "throughput" in parts:
    with _part(report, "throughput"):
      part_throughput(settings, report, cells)
  cells.clear()
  report.data["elapsed_s"]["total"] = round(time.perf_counter() - report.t0, 2)
  report.write()
  failures = report.data["failures"]
  report.line(f"done in {report.data['elapsed_s']['total']:.1f} s: "
              f"{'all checks passed' if not failures else f'{len(failures)} failed'}; report {args.out}")  # fmt: skip
  return 0 if not failures else 1


if __name__ == "__main__":
  sys.exit(main())
