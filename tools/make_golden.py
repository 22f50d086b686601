"""Writes golden inputs/outputs of the official ME-GraphAU heads for tests/test_head_parity.py.

Usage: python tools/make_golden.py --official /path/to/ME-GraphAU --out tests/data/golden_heads.npz

Needs a checkout of the official PyTorch code (CVI-SZU/ME-GraphAU), torch, torchvision and timm.
Nothing of the official code is copied: this script imports it from the given path, builds
``global_linear`` + ``Head`` of both stages at small sizes with random weights and random
BatchNorm statistics, and stores state_dicts, inputs and outputs (eval and train mode).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _randomize(module, torch, gen):
  """Random parameters and BatchNorm buffers (non-trivial statistics)."""
  with torch.no_grad():
    for _, p in module.named_parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.ndim > 1 else 0.2))
    for name, b in module.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(torch.randn(b.shape, generator=gen) * 0.3)
      elif name.endswith("running_var"):
        b.copy_(torch.rand(b.shape, generator=gen) + 0.5)


class _CpuAsDevice0:
  """The official stage-2 GNN binds its edge matrices only when ``x.get_device() >= 0`` (CUDA).

  On a CPU-only machine this shim reports device 0 and makes ``.to(0)`` a no-op, so the official
  forward runs unchanged on the CPU.
  """

  def __init__(self, torch):
    self.torch = torch

  def __enter__(self):
    t = self.torch.Tensor
    self._get_device, self._to = t.get_device, t.to
    orig_to = t.to
    t.get_device = lambda self_: 0
    t.to = lambda self_, *a, **k: self_ if (len(a) == 1 and a[0] == 0 and not k) else orig_to(self_, *a, **k)
    return self

  def __exit__(self, *exc):
    self.torch.Tensor.get_device, self.torch.Tensor.to = self._get_device, self._to


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--official", required=True, help="path of a checkout of CVI-SZU/ME-GraphAU")
  parser.add_argument("--out", default="tests/data/golden_heads.npz")
  args = parser.parse_args(argv)
  sys.path.insert(0, args.official)
  import torch  # pylint: disable=import-outside-toplevel
  from model import ANFL, MEFL  # pylint: disable=import-outside-toplevel
  from model.basic_block import LinearBlock  # pylint: disable=import-outside-toplevel

  gen = torch.Generator().manual_seed(0)
  out = {}
  # (name, stage, C_in, C, N, K, metric, B, D)
  cases = [
    ("s1_dots", 1, 24, 12, 5, 3, "dots", 4, 9),
    ("s1_cosine", 1, 24, 12, 6, 2, "cosine", 3, 9),
    ("s1_l1", 1, 24, 12, 5, 4, "l1", 3, 4),
    ("s2", 2, 24, 12, 5, None, None, 4, 9),
    ("s2_n8", 2, 16, 8, 8, None, None, 3, 4),
  ]
  for idx, (name, stage, c_in, c, n, k, metric, b, d) in enumerate(cases):
    torch.manual_seed(idx)
    gl = LinearBlock(c_in, c)
    head = ANFL.Head(c, n, neighbor_num=k, metric=metric) if stage == 1 else MEFL.Head(c, n)
    net = torch.nn.ModuleDict({"global_linear": gl, "head": head})
    _randomize(net, torch, gen)
    x = torch.randn(b, d, c_in, generator=gen)
    net.eval()
    with torch.no_grad(), _CpuAsDevice0(torch):
      y = head(gl(x))
    cfg = dict(stage=stage, c_in=c_in, c=c, n=n, k=k or 0, metric=metric or "", b=b, d=d)
    for kk, vv in cfg.items():
      out[f"{name}/cfg/{kk}"] = np.asarray(vv)
    out[f"{name}/x"] = x.numpy()
    for kk, vv in net.state_dict().items():
      out[f"{name}/sd/{kk}"] = vv.numpy().copy()
    outs = (y,) if stage == 1 else y
    out[f"{name}/eval/au_probs"] = outs[0].numpy()
    if stage == 2:
      out[f"{name}/eval/edge_logits"] = outs[1].numpy()
    net.train()
    with torch.no_grad(), _CpuAsDevice0(torch):
      y = head(gl(x))
    outs = (y,) if stage == 1 else y
    out[f"{name}/train/au_probs"] = outs[0].numpy()
    if stage == 2:
      out[f"{name}/train/edge_logits"] = outs[1].numpy()
    for kk, vv in net.state_dict().items():
      if kk.endswith("running_mean") or kk.endswith("running_var"):
        out[f"{name}/train_sd/{kk}"] = vv.numpy().copy()
  np.savez_compressed(args.out, **out)
  print(f"wrote {args.out}: {len(out)} arrays, cases {[c[0] for c in cases]}")


if __name__ == "__main__":
  main()
