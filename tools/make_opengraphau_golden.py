"""Writes golden outputs of the official OpenGraphAU models for tests/test_opengraphau*.py.

Usage: python tools/make_opengraphau_golden.py --official /path/to/ME-GraphAU/OpenGraphAU \
         [--megraph /path/to/ME-GraphAU] --out tests/data/golden_opengraphau.npz

Needs the official PyTorch code (CVI-SZU/ME-GraphAU, its OpenGraphAU/ folder), torch, torchvision and timm. Nothing
of it is copied: this script imports it from the given path and records, all at small sizes,
- ``head/*``: ``global_linear`` + both stages' ``Head`` (C=8, the 27 + 14 AUs) with random weights and BatchNorm
  statistics, every FGG metric, in eval and train mode (state_dicts stored: a few kB);
- ``full/*``: whole models (ResNet-18/50, Swin-T/B, MAE ViT-B) whose weights come from
  ``tests/helpers.seeded_state_dict`` (seeded by key name), so only key names, shapes and outputs are stored;
- ``loss/*``: the official ``WeightedAsymmetricLoss`` with labels -1 (not annotated);
- ``demo/*``: the official demo path (``pil_loader`` + ``image_eval`` + model) on PNG photos of odd sizes drawn by
  ``tests/helpers.seeded_photo``, for OpenGraphAU and (with ``--megraph``) ME-GraphAU.
The official stage-2 ResNet-50 loads ImageNet weights in its constructor; here it is built with pretrained=False.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
from helpers import FIXED_BUFFERS, OPENGRAPHAU_FULL, seeded_images, seeded_photo, seeded_state_dict  # noqa: E402
from make_golden import _CpuAsDevice0  # noqa: E402  (ME-GraphAU's stage-2 GNN binds its edge matrices on CUDA only)

FLOAT64 = ("r18_s2",)  # whole-model cases: tests/helpers.OPENGRAPHAU_FULL
PHOTOS = ((300, 200), (181, 257), (256, 256), (97, 143), (480, 641))  # (height, width), seeds 0..4
DEMO = {"og_r18_s2": ("resnet18", 2, 9), "og_r18_s1": ("resnet18", 1, 10)}  # OpenGraphAU (backbone, stage, seed)
DEMO_MEGRAPH = {"mg_r18_s2": ("resnet18", 2, 11, 12)}  # ME-GraphAU (backbone, stage, seed, num AUs)


def _import_official(root: str):
  """Imports the official ``model`` package, ``utils`` and ``dataset`` of ``root`` (dropping another root's)."""
  for name in list(sys.modules):
    if name in ("model", "utils", "dataset") or name.startswith("model."):
      del sys.modules[name]
  sys.path.insert(0, root)
  try:
    import dataset  # pylint: disable=import-outside-toplevel
    import utils  # pylint: disable=import-outside-toplevel
    from model import ANFL, MEFL  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(root)
  return ANFL, MEFL, utils, dataset


def _no_pretrained(module) -> None:
  """Some official backbone calls (the OpenGraphAU stage-2 ``resnet50()``, ME-GraphAU's ResNets) default to
  pretrained=True, which reads an ImageNet file from disk: build every backbone without."""
  for name in ("resnet18", "resnet50", "resnet101", "swin_transformer_tiny", "swin_transformer_small"):
    if hasattr(module, name):
      orig = getattr(module, name)
      setattr(module, name, lambda pretrained=False, _orig=orig, **kw: _orig(pretrained=False, **kw))
  if hasattr(module, "swin_transformer_base"):
    orig_b = module.swin_transformer_base
    module.swin_transformer_base = lambda pretrained=False, **kw: orig_b(pretrained=False, **kw)


def _randomize_head(module, torch, gen) -> None:
  with torch.no_grad():
    for _, p in module.named_parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.ndim > 1 else 0.2))
    for name, b in module.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(torch.randn(b.shape, generator=gen) * 0.3)
      elif name.endswith("running_var"):
        b.copy_(torch.rand(b.shape, generator=gen) + 0.5)


def _seed_weights(net, seed: int, torch) -> dict:
  """Puts ``seeded_state_dict`` weights into ``net``; returns ``{key: shape}`` of its whole state_dict."""
  sd = net.state_dict()
  shapes = {k: tuple(v.shape) for k, v in sd.items()}
  floats = {k: s for k, s in shapes.items() if not k.endswith(FIXED_BUFFERS) and sd[k].is_floating_point()}
  new = {k: torch.from_numpy(v) for k, v in seeded_state_dict(floats, seed).items()}
  net.load_state_dict({**sd, **new}, strict=True)
  return shapes


def _heads(anfl, mefl, torch, out: dict) -> None:
  from model.basic_block import LinearBlock  # pylint: disable=import-outside-toplevel

  gen = torch.Generator().manual_seed(0)
  # (name, stage, C_in, C, K, official metric, B, D)
  cases = [
    ("h1_dots", 1, 16, 8, 4, "dots", 3, 5),
    ("h1_cosine", 1, 16, 8, 3, "cosine", 3, 5),
    ("h1_l1", 1, 16, 8, 4, "l1", 3, 4),
    ("h1_l2", 1, 16, 8, 5, "l2", 2, 5),
    ("h2", 2, 16, 8, 0, "", 3, 4),
  ]
  for idx, (name, stage, c_in, c, k, metric, b, d) in enumerate(cases):
    torch.manual_seed(idx)
    head = anfl.Head(c, 27, 14, neighbor_num=k, metric=metric) if stage == 1 else mefl.Head(c, 27, 14)
    net = torch.nn.ModuleDict({"global_linear": LinearBlock(c_in, c), "head": head})
    _randomize_head(net, torch, gen)
    x = torch.randn(b, d, c_in, generator=gen)
    cfg = dict(stage=stage, c_in=c_in, c=c, k=k, metric=metric, b=b, d=d)
    out[f"head/{name}/cfg"] = np.asarray(json.dumps(cfg))
    out[f"head/{name}/x"] = x.numpy()
    for kk, vv in net.state_dict().items():
      out[f"head/{name}/sd/{kk}"] = vv.numpy().copy()
    for mode in ("eval", "train"):
      net.train(mode == "train")
      with torch.no_grad():
        out[f"head/{name}/{mode}"] = net["head"](net["global_linear"](x)).numpy()
    for kk, vv in net.state_dict().items():
      if kk.endswith(("running_mean", "running_var")):
        out[f"head/{name}/train_sd/{kk}"] = vv.numpy().copy()


def _loss(utils, torch, out: dict) -> None:
  """The official WeightedAsymmetricLoss on scores with labels 0/1/-1 (not annotated), with and without weights."""
  gen = torch.Generator().manual_seed(1)
  probs = torch.rand(6, 41, generator=gen, dtype=torch.float64) * 1.2 - 0.1  # cosine scores may leave [0, 1]
  labels = torch.randint(-1, 2, (6, 41), generator=gen).double()
  weights = torch.rand(41, generator=gen, dtype=torch.float64) + 0.5
  out["loss/probs"], out["loss/labels"], out["loss/weights"] = probs.numpy(), labels.numpy(), weights.numpy()
  out["loss/weighted"] = utils.WeightedAsymmetricLoss(weight=weights)(probs, labels).numpy()
  out["loss/unweighted"] = utils.WeightedAsymmetricLoss()(probs, labels).numpy()


def _build(anfl, mefl, backbone: str, stage: int):
  if stage == 1:
    return anfl.MEFARG(num_main_classes=27, num_sub_classes=14, backbone=backbone, neighbor_num=4, metric="dots")
  return mefl.MEFARG(num_main_classes=27, num_sub_classes=14, backbone=backbone)


def _full(anfl, mefl, torch, out: dict, only: list[str] | None) -> None:
  for name, (backbone, stage, size, batch, seed) in OPENGRAPHAU_FULL.items():
    if only and name not in only:
      continue
    net = _build(anfl, mefl, backbone, stage)
    shapes = _seed_weights(net, seed, torch)
    net.eval()
    x = torch.from_numpy(seeded_images(seed, batch, size).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
      out[f"full/{name}/out"] = net(x).numpy()
      if name in FLOAT64:
        net.double()
        if stage == 2:  # plain tensor attributes: .double() leaves them float32
          net.head.gnn.start, net.head.gnn.end = net.head.gnn.start.double(), net.head.gnn.end.double()
        out[f"full/{name}/out64"] = net(x.double()).numpy()
    out[f"full/{name}/keys"] = np.asarray(json.dumps(shapes))
    print(
      f"{name}: {len(shapes)} tensors, scores {out[f'full/{name}/out'].min():.3f}..{out[f'full/{name}/out'].max():.3f}"
    )


def _demo(build, utils, dataset, torch, cases: dict, prefix: str, out: dict) -> None:
  """Official demo path: pil_loader -> image_eval -> model, one image at a time."""
  with tempfile.TemporaryDirectory() as tmp:
    paths = []
    for i, (h, w) in enumerate(PHOTOS):
      from PIL import Image  # pylint: disable=import-outside-toplevel

      paths.append(os.path.join(tmp, f"photo{i}.png"))
      Image.fromarray(seeded_photo(i, h, w)).save(paths[-1])
    for name, (backbone, stage, seed, *rest) in cases.items():
      net = build(backbone, stage, *rest)
      shapes = _seed_weights(net, seed, torch)
      net.eval()
      transform = utils.image_eval() if hasattr(utils, "image_eval") else utils.image_test()  # ME-GraphAU's name
      with torch.no_grad(), _CpuAsDevice0(torch):
        scores = [net(transform(dataset.pil_loader(p)).unsqueeze(0)) for p in paths]
      scores = [s[0] if isinstance(s, tuple) else s for s in scores]  # ME-GraphAU stage 2: (probs, edge logits)
      out[f"{prefix}/{name}/out"] = torch.cat(scores).numpy()
      out[f"{prefix}/{name}/keys"] = np.asarray(json.dumps(shapes))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--official", required=True, help="path of the official OpenGraphAU folder")
  parser.add_argument("--megraph", default=None, help="path of the official ME-GraphAU checkout (demo/mg_*)")
  parser.add_argument("--out", default=os.path.join(REPO, "tests", "data", "golden_opengraphau.npz"))
  parser.add_argument("--only", nargs="*", default=None, help="full/* cases to compute (default: all)")
  args = parser.parse_args(argv)
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
  out: dict = {}
  anfl, mefl, utils, dataset = _import_official(args.official)
  _no_pretrained(anfl), _no_pretrained(mefl)
  _heads(anfl, mefl, torch, out)
  _loss(utils, torch, out)
  _full(anfl, mefl, torch, out, args.only)
  _demo(lambda b, s: _build(anfl, mefl, b, s), utils, dataset, torch, DEMO, "demo", out)
  if args.megraph:
    anfl, mefl, utils, dataset = _import_official(args.megraph)
    _no_pretrained(anfl), _no_pretrained(mefl)

    def build_megraph(backbone, stage, num_aus):
      if stage == 1:
        return anfl.MEFARG(num_classes=num_aus, backbone=backbone, neighbor_num=4, metric="dots")
      return mefl.MEFARG(num_classes=num_aus, backbone=backbone)

    _demo(build_megraph, utils, dataset, torch, DEMO_MEGRAPH, "demo", out)
  out["photos"] = np.asarray(PHOTOS)
  np.savez_compressed(args.out, **out)
  print(f"wrote {args.out}: {len(out)} arrays ({os.path.getsize(args.out) / 1e3:.0f} kB)")


if __name__ == "__main__":
  main()
