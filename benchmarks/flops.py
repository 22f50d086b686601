"""FLOPs per image by part (XLA cost analysis), ours vs the official PyTorch model.

Usage: python benchmarks/flops.py [--backbones resnet50,swin_transformer_base] [--num-aus 12,41]
                                  [--official PATH_TO_ME-GraphAU]

Parts: backbone; global_linear + AFG; MEFL (FAM, ARM, edge projection, edge BatchNorm, token mean);
GatedGCN (+ SC head and edge FC); stage 1: FGG + SC head. Each part is jitted alone on its real input shape
(batch 1, fp32, eval mode) and XLA's cost analysis gives its FLOPs (2 per multiply-add). With --official, the same
parts of the official model are counted by torch.utils.flop_counter (matmul/conv FLOPs only) and
the ratios printed.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
from flax import nnx

from megraph_jax.model_factory import ModelSpec, build


def _flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def ours(backbone: str, num_aus: int, stage: int, img: int = 224, streaming: bool = True) -> dict[str, float]:
  """GFLOPs per image by part for our model."""
  model = nnx.eval_shape(lambda: build(ModelSpec(backbone, num_aus, stage, img_size=img)))
  model.eval()
  if stage == 2:
    model.mefl.streaming = streaming
  gd, st = nnx.split(model)
  m = lambda s: nnx.merge(gd, s)
  images = jax.ShapeDtypeStruct((1, img, img, 3), jnp.float32)
  feats = jax.eval_shape(lambda s, x: m(s).backbone(x), st, images)
  x = jax.ShapeDtypeStruct(feats.shape[:2] + (model.channels,), jnp.float32)
  u = jax.ShapeDtypeStruct((1, num_aus) + x.shape[1:], jnp.float32)
  parts = {
    "backbone": _flops(lambda s, i: m(s).backbone(i), st, images),
    "global_linear+AFG": _flops(lambda s, f: m(s).afg(m(s).global_linear(f)), st, feats),
  }
  if stage == 1:
    v = jax.ShapeDtypeStruct((1, num_aus, model.channels), jnp.float32)
    parts["FGG+SC"] = _flops(lambda s, v: m(s).sc(m(s).fgg(v)[0]), st, v)
  else:
    parts["MEFL"] = _flops(lambda s, u, x: m(s).mefl(u, x), st, u, x)
    v = jax.ShapeDtypeStruct((1, num_aus, model.channels), jnp.float32)
    e = jax.ShapeDtypeStruct((1, num_aus * num_aus, model.channels), jnp.float32)
    parts["GatedGCN+SC+edge_fc"] = _flops(
      lambda s, v, e: (lambda o: (m(s).sc(o[0]), m(s).edge_fc(o[1])))(m(s).gnn(v, e)), st, v, e
    )
  return {k: v / 1e9 for k, v in parts.items()}


def official(path: str, backbone: str, num_aus: int, stage: int, img: int = 224) -> dict[str, float]:
  """GFLOPs per image by part for the official model (torch FlopCounterMode)."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
  from check_official_parity import _official_model  # pylint: disable=import-outside-toplevel
  from make_golden import _CpuAsDevice0  # pylint: disable=import-outside-toplevel

  net = _official_model(path, stage, backbone, num_aus, 4).eval()

  def count(fn, *args):
    with torch.no_grad(), _CpuAsDevice0(torch), FlopCounterMode(display=False) as fc:
      out = fn(*args)
    return fc.get_total_flops() / 1e9, out

  images = torch.randn(1, 3, img, img)
  parts = {}
  parts["backbone"], feats = count(net.backbone, images)
  head = net.head

  def afg(f):
    x = net.global_linear(f)
    return x, torch.stack([linear(x) for linear in head.class_linears], 1)

  parts["global_linear+AFG"], (x, fu) = count(afg, feats)
  if stage == 1:
    parts["FGG+SC"], _ = count(lambda v: head.gnn(v), fu.mean(-2))
  else:
    gem = head.edge_extractor
    b, n, d, c = fu.shape
    parts["MEFL"], fe = count(lambda a, g: gem(a, g).mean(-2), fu, x)
    parts["GatedGCN+SC+edge_fc"], _ = count(lambda v, e: head.edge_fc(head.gnn(v, e)[1]), fu.mean(-2), fe)
  return parts


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--backbones", default="resnet50,swin_transformer_base")
  p.add_argument("--num-aus", default="12,41")
  p.add_argument("--stages", default="1,2")
  p.add_argument("--official", default=None)
  p.add_argument("--direct", action="store_true", help="our direct (reference) MEFL instead of streaming")
  args = p.parse_args(argv)
  for backbone in args.backbones.split(","):
    for n in map(int, args.num_aus.split(",")):
      for stage in map(int, args.stages.split(",")):
        mine = ours(backbone, n, stage, streaming=not args.direct)
        theirs = official(args.official, backbone, n, stage) if args.official else None
        print(f"\n{backbone} stage {stage} N={n}: GFLOP per image (batch 1, 224 px)")
        for k, v in mine.items():
          row = f"  {k:22s} ours {v:8.3f}"
          if theirs is not None:
            row += f"   official {theirs[k]:8.3f}   ours/official {v / max(theirs[k], 1e-12):.3f}"
          print(row)
        total = sum(mine.values())
        head = total - mine["backbone"]
        row = f"  {'total':22s} ours {total:8.3f}   head {head:.3f} = {100 * head / mine['backbone']:.1f}% of backbone"
        if theirs is not None:
          t_head = sum(theirs.values()) - theirs["backbone"]
          row += f"   official head {t_head:.3f}   head ratio ours/official 1/{t_head / max(head, 1e-12):.1f}"
        print(row, flush=True)


if __name__ == "__main__":
  main()
