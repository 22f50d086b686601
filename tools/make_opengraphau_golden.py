"""Writes golden outputs of the official OpenGraphAU models for tests/test_opengraphau*.py.

Usage: python tools/make_opengraphau_golden.py --official /path/to/ME-GraphAU/OpenGraphAU \
         [--megraph /path/to/ME-GraphAU] --out tests/data/golden_opengraphau.npz [--only r18_s1 head/h2 ...]

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

The file also records where it came from: ``official_commit`` (``git rev-parse HEAD`` of ``--official``, or
``--commit``), ``versions`` (JSON: Python, NumPy, torch, torchvision, timm) and ``provenance`` (JSON: per case, the
commits and versions that computed it). ``--only`` recomputes just the named cases (``r18_s1`` or ``full/r18_s1``,
``head/h2``, ``demo/og_r18_s2``, ``loss``) and keeps every other case of the existing ``--out`` file as it was.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
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
HEADS = ("h1_dots", "h1_cosine", "h1_l1", "h1_l2", "h2")  # the head/* cases (_heads)
META = ("official_commit", "versions", "provenance", "photos")  # arrays of no case: rewritten on every write
LIBRARIES = ("numpy", "torch", "torchvision", "timm")


# ----------------------------------------------------------------------------- cases, provenance, merging


def all_cases() -> list[str]:
  """Every case of the file, as the prefix of its arrays (``head/h2``, ``loss``, ``full/r18_s1``, ``demo/...``)."""
  return (
    [f"head/{h}" for h in HEADS]
    + ["loss"]
    + [f"full/{n}" for n in OPENGRAPHAU_FULL]
    + [f"demo/{n}" for n in (*DEMO, *DEMO_MEGRAPH)]
  )


def case_of(key: str) -> str | None:
  """The case an array belongs to (None: file metadata)."""
  if key in META:
    return None
  parts = key.split("/")
  return parts[0] if parts[0] == "loss" else "/".join(parts[:2])


def resolve_only(names: list[str] | None) -> list[str]:
  """The cases ``--only`` names (a bare name is a ``full/*`` case, as before); all cases without ``--only``."""
  if not names:
    return all_cases()
  known, out = all_cases(), []
  for name in names:
    case = f"full/{name}" if name in OPENGRAPHAU_FULL else name
    if case not in known:
      raise SystemExit(f"--only {name}: no such case; cases: {' '.join(known)}")
    out.append(case)
  return out


def official_commit(path: str, given: str | None = None) -> str:
  """``given``, else ``git rev-parse HEAD`` of the checkout holding ``path``."""
  if given:
    return given
  try:
    proc = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
  except (OSError, subprocess.CalledProcessError) as e:
    raise SystemExit(f"{path} is not in a git work tree; pass the commit of that checkout (--commit)") from e
  return proc.stdout.strip()


def library_versions() -> dict[str, str]:
  """Versions of Python and of the libraries the official code ran on (``-`` when one is not installed)."""
  out = {"python": platform.python_version()}
  for name in LIBRARIES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "-"
  return out


def merge(old: dict, new: dict, records: dict[str, dict]) -> dict:
  """The file's arrays after recomputing the cases of ``records`` (their arrays in ``new``; a record: the commit and
  versions that computed the case): the other cases of ``old`` kept as they were, the recomputed ones replaced
  whole; ``provenance`` per case (``unrecorded`` for a kept case of a file written before it was recorded);
  ``official_commit`` and ``versions`` those of every case when they agree, else ``mixed: see provenance``."""
  for key in new:
    if key not in META and case_of(key) not in records:
      raise ValueError(f"merge: {key} is not an array of the recomputed cases {sorted(records)}")
  out = {k: v for k, v in old.items() if k not in META and case_of(k) not in records}
  out.update({k: v for k, v in new.items() if k not in META})
  before = json.loads(str(old["provenance"])) if "provenance" in old else {}
  unrecorded = {"official_commit": "unrecorded", "versions": "unrecorded"}
  provenance = {c: records.get(c, before.get(c, unrecorded)) for c in sorted({case_of(k) for k in out} - {None})}

  def common(field: str):
    values = {json.dumps(p[field], sort_keys=True) for p in provenance.values()}
    return json.loads(values.pop()) if len(values) == 1 else "mixed: see provenance"

  out["official_commit"] = np.asarray(common("official_commit"))
  out["versions"] = np.asarray(json.dumps(common("versions"), sort_keys=True))
  out["provenance"] = np.asarray(json.dumps(provenance, sort_keys=True))
  out["photos"] = np.asarray(PHOTOS)
  return out


def write(path: str, new: dict, records: dict[str, dict], *, partial: bool) -> dict:
  """Writes ``new`` (the arrays of the cases of ``records``) to ``path``; ``partial`` (``--only``): merged into the
  file there, its other cases kept. Returns what was written."""
  old: dict = {}
  if partial:
    if not os.path.exists(path):
      raise SystemExit(f"--only updates {path}, which does not exist; run without --only to write it")
    with np.load(path) as z:
      old = {k: z[k] for k in z.files}
  out = merge(old, new, records)
  np.savez_compressed(path, **out)
  return out


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
    if only is not None and name not in only:
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
  parser.add_argument(
    "--only", nargs="*", default=None, help="cases to recompute, the others kept from --out (default: all)"
  )
  parser.add_argument("--commit", default=None, help="commit of the --official checkout (default: git rev-parse)")
  parser.add_argument("--megraph-commit", default=None, help="commit of the --megraph checkout (default: git)")
  args = parser.parse_args(argv)
  cases = resolve_only(args.only)
  if args.only and not os.path.exists(args.out):
    raise SystemExit(f"--only updates {args.out}, which does not exist; run without --only to write it")
  megraph_cases = [f"demo/{n}" for n in DEMO_MEGRAPH]
  if not args.megraph:
    if args.only and set(cases) & set(megraph_cases):
      raise SystemExit(f"--only {' '.join(megraph_cases)} needs --megraph")
    cases = [c for c in cases if c not in megraph_cases]
  versions = library_versions()
  commits = {"og": official_commit(os.path.abspath(args.official), args.commit)}
  if args.megraph:
    commits["mg"] = official_commit(os.path.abspath(args.megraph), args.megraph_commit)
  records = {c: {"official_commit": commits["mg" if c in megraph_cases else "og"], "versions": versions} for c in cases}
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
  out: dict = {}
  anfl, mefl, utils, dataset = _import_official(args.official)
  _no_pretrained(anfl), _no_pretrained(mefl)
  if any(c.startswith("head/") for c in cases):
    _heads(anfl, mefl, torch, out)  # all of them (one random stream), the others dropped below
  if "loss" in cases:
    _loss(utils, torch, out)
  _full(anfl, mefl, torch, out, [c[len("full/") :] for c in cases if c.startswith("full/")])
  if any(c.startswith("demo/og_") for c in cases):
    _demo(lambda b, s: _build(anfl, mefl, b, s), utils, dataset, torch, DEMO, "demo", out)
  if args.megraph and set(cases) & set(megraph_cases):
    anfl, mefl, utils, dataset = _import_official(args.megraph)
    _no_pretrained(anfl), _no_pretrained(mefl)

    def build_megraph(backbone, stage, num_aus):
      if stage == 1:
        return anfl.MEFARG(num_classes=num_aus, backbone=backbone, neighbor_num=4, metric="dots")
      return mefl.MEFARG(num_classes=num_aus, backbone=backbone)

    _demo(build_megraph, utils, dataset, torch, DEMO_MEGRAPH, "demo", out)
  out = {k: v for k, v in out.items() if case_of(k) in cases}
  written = write(args.out, out, records, partial=bool(args.only))
  print(
    f"wrote {args.out}: {len(written)} arrays ({os.path.getsize(args.out) / 1e3:.0f} kB); recomputed "
    f"{' '.join(cases)} with the official code at {' / '.join(commits.values())}"
  )


if __name__ == "__main__":
  main()
