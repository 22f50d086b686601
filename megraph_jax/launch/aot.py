"""Compile the train and eval steps for a TPU slice on this host (no TPU needed) and report what it costs.

  python -m megraph_jax.launch.aot --config=configs/bp4d_swin.py --topology=v5e:4x4 --config.model.dtype=bfloat16
  python -m megraph_jax.launch.aot --config=configs/bp4d_resnet50.py --topology=v4-8 --config.sharding.params=fsdp

The steps are the training job's own (``train.train_step`` / ``train.eval_step`` with the shardings of
``train.jit_train_step``: batch split over a 'data' axis of every chip, parameters replicated or FSDP),
lowered on abstract shapes and compiled by XLA:TPU for the slice's compile-only devices
(``jax.experimental.topologies``; needs ``pip install -e '.[tpu]'``). Printed: chips, hosts, batches,
layout, per-chip HBM (arguments, temporaries, total) against the chip's capacity, FLOPs per chip per
step (XLA cost analysis), the collectives in the compiled train step, and a step time at a stated
MFU with the images/s it gives and the decoding rate each host's input pipeline must sustain.

Exit status: 0 fits, 3 does not fit in HBM, 2 the config or the shapes cannot run (batch not
divisible by the chips, per-chip batch 0, unknown topology, libtpu missing).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from megraph_jax import model_factory, sharding
from megraph_jax.launch import tpu_topology
from megraph_jax.train import stage as train
from megraph_jax.train.train_state import TrainState

EXIT_CONFIG_ERROR = 2
EXIT_DOES_NOT_FIT = 3

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_DTYPE_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
}


class ShapeError(ValueError):
  """The config's batch cannot be split over the slice (reported with exit status 2)."""


def check_shapes(global_batch: int, chips: int, hosts: int, key: str = "batch_size") -> int:
  """Per-chip batch of ``global_batch`` on ``chips`` chips over ``hosts`` hosts; ShapeError if it cannot shard."""
  if global_batch < chips:
    raise ShapeError(
      f"config key '{key}' = {global_batch} over {chips} chips gives a per-chip batch of 0; use a "
      f"global batch of at least {chips} (a multiple of {chips}) or a smaller slice / subslice"
    )
  if global_batch % chips:
    lo, hi = global_batch // chips * chips, -(-global_batch // chips) * chips
    raise ShapeError(f"config key '{key}' = {global_batch} does not divide over {chips} chips; use {lo} or {hi}")
  if global_batch % hosts:
    raise ShapeError(f"config key '{key}' = {global_batch} does not divide over the {hosts} hosts' input pipelines")
  return global_batch // chips


def _bytes_of(type_text: str) -> int:
  total = 0
  for dtype, dims in re.findall(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]", type_text):
    if dtype in _DTYPE_BYTES:
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      total += n * _DTYPE_BYTES[dtype]
  return total


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{kind: {'count', 'bytes'}} of the collectives in compiled HLO text (static count; bytes of the results)."""
  out: dict[str, dict[str, int]] = {}
  op = "|".join(COLLECTIVES)
  for line in hlo_text.splitlines():
    m = re.search(rf"=\s*(.*?)\s+({op})(-start|-done)?\(", line)
    if not m:
      continue
    result, kind, suffix = m.groups()
    entry = out.setdefault(kind, {"count": 0, "bytes": 0})
    if suffix != "-done":
      entry["count"] += 1
    if suffix != "-start":  # a -start result may hold the operands too; its -done holds just the result
      entry["bytes"] += _bytes_of(result)
  return out


def _memory(compiled) -> dict[str, int]:
  ma = compiled.memory_analysis()
  args, out, alias = ma.argument_size_in_bytes, ma.output_size_in_bytes, ma.alias_size_in_bytes
  temp, code = ma.temp_size_in_bytes, ma.generated_code_size_in_bytes
  return {
    "arguments": args,
    "outputs_not_aliased": out - alias,
    "temporaries": temp,
    "code": code,
    "total": args + out - alias + temp + code,
  }


def _oom(message: str) -> dict[str, Any]:
  """XLA:TPU refuses to compile a step that cannot fit: keep its figures ('... temporaries (20.06G) exceeds
  available HBM (15.75G)')."""
  sizes = [float(v) * 2**30 for v in re.findall(r"\(([0-9.]+)G\)", message)]
  line = next((ln for ln in message.splitlines() if "RESOURCE_EXHAUSTED" in ln), message.splitlines()[0])
  out: dict[str, Any] = {"oom": line.strip()[:500]}
  if len(sizes) >= 2:
    out["required"], out["available"] = int(sizes[0]), int(sizes[1])
  return out


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def abstract_steps(config, mesh, stage: int):
  """``train.py``'s steps on ``mesh``: (train jit, eval jit, abstract train args, abstract eval args, #params)."""

  settings = config.stage1 if stage == 1 else config.stage2
  model = nnx.eval_shape(lambda: model_factory.build_from_config(config, stage))
  eval_graphdef = train.eval_graphdef(model)
  params = nnx.state(model, nnx.Param)
  tx, _ = train.make_optimizer(config, stage, params, 1000)
  graphdef, state = nnx.split(nnx.eval_shape(lambda m: TrainState(m, tx), model))
  mode, min_size = config.sharding.params, config.sharding.fsdp_min_size
  state_sh = sharding.state_shardings(state, mesh, mode, min_size)
  data = sharding.data_sharded(mesh)

  def spec(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

  crop = config.dataset.crop_size
  probe = jax.ShapeDtypeStruct((1, crop, crop, 3), jnp.float32)  # [1, H, W, 3]
  n = jax.eval_shape(lambda st, x: nnx.merge(eval_graphdef, st)(x), state["model"], probe)["au_probs"].shape[
    -1
  ]  # N AUs
  class_weights = np.ones((n,), np.float32)
  lam = float(settings.lam) if stage == 2 else 0.0
  options = train.step_options(config)

  def batch(size: int, with_mask: bool) -> dict[str, Any]:
    # Training batches carry uint8 pixels (+ colour-jitter draws) made model inputs in the step; eval's are float.
    pixels = jnp.float32 if with_mask else jnp.uint8
    out = {
      "image": jax.ShapeDtypeStruct((size, crop, crop, 3), pixels, sharding=data),  # [B, H, W, 3]
      "label": jax.ShapeDtypeStruct((size, n), jnp.float32, sharding=data),  # [B, N]
      "relation": jax.ShapeDtypeStruct((size, n * n), jnp.int32, sharding=data),
    }  # [B, N*N]
    if with_mask:
      out["mask"] = jax.ShapeDtypeStruct((size,), jnp.float32, sharding=data)  # [B]
    elif config.dataset.color_jitter:
      out["jitter"] = jax.ShapeDtypeStruct((size, 3, 3), jnp.float32, sharding=data)  # [B, 3 steps, 3]
    return out

  # train.jit_train_step / jit_eval_step, with the donation a TPU run gets (the train state in place).
  train_fn = train.jit_train_step(graphdef, class_weights, lam, mesh, state_sh, donate=True, **options)
  eval_fn = train.jit_eval_step(eval_graphdef, class_weights, mesh, state_sh["model"], **options)
  eval_batch = -(-config.eval_batch_size // mesh.devices.size) * mesh.devices.size
  train_args = (spec(state, state_sh), batch(config.batch_size, False))
  eval_args = (spec(state["model"], state_sh["model"]), batch(eval_batch, True))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  return train_fn, eval_fn, train_args, eval_args, n_params


def compile_report(
  config,
  topology: str,
  *,
  stage: int = 2,
  steps: tuple[str, ...] = ("train", "eval"),
  mfu: float = 0.4,
  num_slices: int = 1,
) -> dict[str, Any]:
  """Compiles the steps of ``config`` for ``topology``; returns the figures the table prints."""

  tpu = tpu_topology.describe(topology, num_slices)
  per_chip = check_shapes(config.batch_size, tpu.chips, tpu.hosts)
  mesh = sharding.make_mesh(list(tpu.devices))
  train_fn, eval_fn, train_args, eval_args, n_params = abstract_steps(config, mesh, stage)
  report: dict[str, Any] = {
    "topology": tpu.name,
    "pod_type": tpu.pod_type,
    "chip": tpu.chip.version,
    "chips": tpu.chips,
    "hosts": tpu.hosts,
    "backbone": config.model.backbone,
    "stage": stage,
    "global_batch": config.batch_size,
    "per_chip_batch": per_chip,
    "params_mode": config.sharding.params,
    "dtype": config.model.dtype,
    "remat": bool(config.model.remat),
    "parameters": n_params,
    "hbm_capacity": int(tpu.chip.hbm_gib * tpu_topology.GIB),
    "mfu": mfu,
    "peak_bf16_tflops": tpu.chip.peak_bf16_tflops,
  }
  for name in steps:
    fn, args = (train_fn, train_args) if name == "train" else (eval_fn, eval_args)
    t0 = time.time()
    lowered = fn.lower(*args)
    t1 = time.time()
    try:
      compiled = lowered.compile()
    except Exception as e:  # pylint: disable=broad-except
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      report[name] = {"lower_s": round(t1 - t0, 1), "compile_s": round(time.time() - t1, 1), **_oom(str(e))}
      continue
    t2 = time.time()
    report[name] = {
      "lower_s": round(t1 - t0, 1),
      "compile_s": round(t2 - t1, 1),
      "memory": _memory(compiled),
      "flops_per_chip": _flops(compiled),
      "collectives": collectives(compiled.as_text()),
    }
    if name == "eval":
      report[name]["global_batch"] = args[1]["image"].shape[0]
  if "train" in report and "memory" in report["train"]:
    report["train"].update(step_time(report["train"], tpu.chip, tpu.chips, config.batch_size, tpu.hosts, mfu))
  report["fits"] = all("memory" in report[s] and report[s]["memory"]["total"] <= report["hbm_capacity"] for s in steps)
  return report


def step_time(train: dict[str, Any], chip, chips: int, global_batch: int, hosts: int, mfu: float) -> dict[str, float]:
  """Step-time model: compute at ``mfu`` of the bf16 peak, and the collectives as ring all-reduces over ICI.

  compute_s = FLOPs per chip / (peak x mfu); collective_s = 2 (n-1)/n x collective bytes / ICI bandwidth;
  step_s = max of the two (XLA overlaps the gradient all-reduce with the backward pass; a lower bound).
  """
  compute = train["flops_per_chip"] / (chip.peak_bf16_tflops * 1e12 * mfu)
  nbytes = sum(v["bytes"] for v in train["collectives"].values())
  comm = 2 * (chips - 1) / chips * nbytes / (chip.ici_gbps * 1e9 / 8) if chips > 1 else 0.0
  step = max(compute, comm)
  rate = global_batch / step if step > 0 else float("inf")
  return {
    "compute_s": compute,
    "collective_s": comm,
    "step_s": step,
    "images_per_s": rate,
    "images_per_s_per_host": rate / hosts,
  }


def _gib(b: float) -> str:
  return f"{b / 2**30:.2f} GiB"


def format_report(r: dict[str, Any]) -> str:
  """The report as a two-column Markdown table."""
  rows = [
    ("slice", f"{r['topology']} ({r['pod_type']}): {r['chips']} chips, {r['hosts']} hosts"),
    ("model", f"{r['backbone']}, stage {r['stage']}, {r['parameters'] / 1e6:.1f} M parameters"),
    ("global batch / per chip", f"{r['global_batch']} / {r['per_chip_batch']}"),
    ("parameters / dtype / remat", f"{r['params_mode']} / {r['dtype']} / {'on' if r['remat'] else 'off'}"),
  ]
  cap = r["hbm_capacity"]
  for step in ("train", "eval"):
    if step not in r:
      continue
    s, m = r[step], r[step].get("memory")
    if m is None:
      need = f"{_gib(s['required'])} > {_gib(s['available'])} usable: " if "required" in s else ""
      rows.append((f"{step}: HBM per chip", f"does not fit ({need}XLA: {s['oom']})"))
      rows.append((f"{step}: compile time here", f"{s['compile_s']:.0f} s until XLA gave up"))
      continue
    rows.append(
      (
        f"{step}: HBM per chip",
        f"{_gib(m['total'])} of {_gib(cap)} ({100 * m['total'] / cap:.0f}%): "
        f"arguments {_gib(m['arguments'])}, temporaries {_gib(m['temporaries'])}, "
        f"outputs {_gib(m['outputs_not_aliased'])}, code {_gib(m['code'])}",
      )
    )
    rows.append((f"{step}: FLOPs per chip per step", f"{s['flops_per_chip'] / 1e12:.3f} TFLOP"))
    coll = ", ".join(f"{k} x{v['count']} ({v['bytes'] / 2**20:.1f} MiB)" for k, v in sorted(s["collectives"].items()))
    rows.append((f"{step}: collectives", coll or "none"))
    rows.append((f"{step}: compile time here", f"{s['compile_s']:.0f} s (+ {s['lower_s']:.0f} s lowering)"))
  if "step_s" in r.get("train", {}):
    t = r["train"]
    step = (
      f"{1e3 * t['step_s']:.1f} ms = max(compute {1e3 * t['compute_s']:.1f} ms at {r['peak_bf16_tflops']:.0f} "
      f"bf16 TFLOP/s peak, collectives {1e3 * t['collective_s']:.1f} ms as ring all-reduces over ICI)"
    )
    rows.append((f"train step at {100 * r['mfu']:.0f}% MFU", step))
    rows.append(("images/s (slice) / per host to load", f"{t['images_per_s']:.0f} / {t['images_per_s_per_host']:.0f}"))
  rows.append(
    (
      "fits",
      "yes"
      if r["fits"]
      else "NO: exceeds HBM; try --config.model.remat=True, --config.sharding.params=fsdp or a smaller batch",
    )
  )
  width = max(len(k) for k, _ in rows)
  lines = [f"| {'quantity':<{width}} | value |", f"|{'-' * (width + 2)}|---|"]
  lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:  # pylint: disable=unused-argument

  flags_ = flags.FLAGS
  try:
    stage = flags_.stage
    steps = tuple(s for s in flags_.steps.split(",") if s)
    if not steps or set(steps) - {"train", "eval"}:
      raise ShapeError(f"--steps={flags_.steps!r}: use train, eval or train,eval")
    report = compile_report(
      flags_.config, flags_.topology, stage=stage, steps=steps, mfu=flags_.mfu, num_slices=flags_.num_slices
    )
  except (ShapeError, ValueError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_CONFIG_ERROR
  report["command"] = " ".join(["python -m megraph_jax.launch.aot"] + sys.argv[1:])
  print(format_report(report), flush=True)
  if flags_.json:
    os.makedirs(os.path.dirname(os.path.abspath(flags_.json)), exist_ok=True)
    with open(flags_.json, "w") as f:
      json.dump(report, f, indent=1)
  return 0 if report["fits"] else EXIT_DOES_NOT_FIT


def _define_flags() -> None:

  config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
  flags.DEFINE_string("topology", None, "TPU slice: v5e:4x4, v4:2x2x2, v5p:2x2x1, v6e:2x4, or v4-8, v5e-64 ...")
  flags.DEFINE_integer("num_slices", 1, "Slices joined over DCN (multislice).")
  flags.DEFINE_integer("stage", 2, "Model of stage 1 (AFG + FGG) or stage 2 (full ME-GraphAU).")
  flags.DEFINE_string("steps", "train,eval", "Steps to compile: train, eval, or both.")
  flags.DEFINE_float("mfu", 0.4, "Model-FLOPs utilisation assumed for the step-time estimate.")
  flags.DEFINE_string("json", None, "Also write the report as JSON here.")
  flags.mark_flags_as_required(["config", "topology"])


if __name__ == "__main__":
  if "JAX_PLATFORMS" not in os.environ:  # the host compiles; the TPU devices are compile-only
    jax.config.update("jax_platforms", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
