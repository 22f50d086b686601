"""Full-size parity with the official PyTorch model: writes official-format checkpoints, loads them.

Usage: python tools/check_official_parity.py --official /path/to/ME-GraphAU [--cases all]

For each case (stage 1/2 x ResNet-50/Swin-B x N = 12/8) it builds the official MEFARG with random
weights and non-trivial BatchNorm statistics, saves ``{'state_dict': ...}`` (with the ``module.``
prefix for half the cases, as DataParallel writes), loads it with ``megraph_jax.loader.load``
and compares ``au_probs`` / ``edge_logits`` on the same random images (eval mode, fp32).
Imports the official code from the given checkout; nothing of it is copied here.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from make_golden import _CpuAsDevice0  # pylint: disable=wrong-import-position


def _official_model(official, stage, backbone, num_aus, neighbor_num):
  sys.path.insert(0, official)
  from model import ANFL, MEFL, resnet, swin_transformer  # pylint: disable=import-outside-toplevel

  mod = ANFL if stage == 1 else MEFL
  # The official factories load ImageNet files by default; build them without.
  for name in ("resnet18", "resnet50", "resnet101"):
    setattr(mod, name, functools.partial(getattr(resnet, name), pretrained=False))
  for name in ("swin_transformer_tiny", "swin_transformer_small", "swin_transformer_base"):
    setattr(mod, name, functools.partial(getattr(swin_transformer, name), pretrained=False))
  if stage == 1:
    return mod.MEFARG(num_classes=num_aus, backbone=backbone, neighbor_num=neighbor_num, metric="dots")
  return mod.MEFARG(num_classes=num_aus, backbone=backbone)


def _perturb(net, torch, gen):
  """Non-trivial BatchNorm statistics and affine parameters, LayerNorm and bias noise."""
  with torch.no_grad():
    for _, m in net.named_modules():
      if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 0.5 + 0.75)
        m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
      elif isinstance(m, torch.nn.LayerNorm):
        m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
      elif isinstance(m, torch.nn.Linear) and m.bias is not None:
        m.bias.copy_(0.02 * torch.randn(m.bias.shape, generator=gen))
    for name, p in net.named_parameters():
      if name.endswith("relative_position_bias_table"):
        p.copy_(0.5 * torch.randn(p.shape, generator=gen))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--official", required=True)
  parser.add_argument("--cases", default="all", help="comma list like 1:resnet50:12,2:swin_transformer_base:8")
  parser.add_argument("--batch", type=int, default=2)
  args = parser.parse_args(argv)
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  from megraph_jax import loader  # pylint: disable=import-outside-toplevel

  if args.cases == "all":
    cases = [(s, b, n) for s in (1, 2) for b in ("resnet50", "swin_transformer_base") for n in (12, 8)]
  else:
    cases = [(int(s), b, int(n)) for s, b, n in (c.split(":") for c in args.cases.split(","))]
  gen = torch.Generator().manual_seed(0)
  rows = []
  for idx, (stage, backbone, n) in enumerate(cases):
    torch.manual_seed(idx)
    k = 4 if n == 12 else 3
    net = _official_model(args.official, stage, backbone, n, k)
    _perturb(net, torch, gen)
    net.eval()
    images = torch.randn(args.batch, 3, 224, 224, generator=gen)
    with torch.no_grad(), _CpuAsDevice0(torch):
      out = net(images)
    ref_probs = (out if stage == 1 else out[0]).numpy()
    state = net.state_dict()
    if idx % 2:
      state = {"module." + kk: v for kk, v in state.items()}
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "official.pth")
      torch.save({"epoch": 3, "state_dict": state}, path)
      t0 = time.time()
      model, _ = loader.load(path, backbone=backbone, num_aus=n, stage=stage, neighbor_num=k)
      ours = model(jnp.asarray(images.numpy().transpose(0, 2, 3, 1)))
      dt = time.time() - t0
    d_probs = float(np.abs(np.asarray(ours["au_probs"]) - ref_probs).max())
    row = f"stage {stage} {backbone:22s} N={n:2d}: au_probs max|diff| {d_probs:.2e}"
    if stage == 2:
      ref_e = out[1].numpy()
      d_edge = float(np.abs(np.asarray(ours["edge_logits"]) - ref_e).max() / np.abs(ref_e).max())
      row += f", edge_logits max|diff|/max|ref| {d_edge:.2e}"
    row += f"  (probs range {ref_probs.min():.3f}..{ref_probs.max():.3f}; load+run {dt:.0f}s)"
    print(row, flush=True)
    rows.append(row)
  return rows


if __name__ == "__main__":
  main()
