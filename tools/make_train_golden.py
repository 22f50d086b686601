"""Writes golden outputs of the official ME-GraphAU training loop (both stages) for tests/test_train_parity.py.

Usage::

  python tools/make_train_golden.py --official /path/to/ME-GraphAU --out tests/data/golden_train.npz \
      [--commit <hash of that checkout, when it is not a git work tree>]

Needs a checkout of the official PyTorch code (CVI-SZU/ME-GraphAU), torch, torchvision, timm and tqdm.
Nothing of the official code is copied: its modules are imported from the given path and its training
functions run unchanged on the CPU in float64:

* stage 1: ``train_stage1.train`` (``model.ANFL.MEFARG``, resnet18, N AUs, tiny images) for 2 epochs of
  2 batches, with the official ``WeightedAsymmetricLoss`` (class weights as the official tool writes and
  ``np.loadtxt`` reads them), ``torch.optim.AdamW`` built as ``train_stage1.main`` builds it, and the
  per-iteration ``utils.adjust_learning_rate`` inside ``train``;
* hand-over: the stage-1 checkpoint is written with ``torch.save`` as ``main`` writes it and loaded into a
  fresh ``model.MEFL.MEFARG`` with the official ``utils.load_state_dict`` (``strict=False``);
* stage 2: ``train_stage2.train`` for 3 epochs of 1 batch, loss ``WA + lam * CrossEntropy`` on the
  relation labels the official tool derives from the AU labels (2 * y_j + y_k at j * N + k).

Three shims make that possible on a CPU-only machine, none of them changing a number: the official
``resnet18()`` is called with ``pretrained=False`` (no ImageNet file; the weights are replaced anyway),
``_CpuAsDevice0`` from tools/make_golden.py (the stage-2 GNN binds its edge matrices only on CUDA), and
``Tensor.float()`` returns float64 (it is only applied to 0/1 adjacency masks and labels, exact in both).
The models are built as the official constructors build them (float32) and converted with ``.double()``;
the stage-2 GNN's 0/1 edge matrices, plain tensors that ``.double()`` skips, are converted by hand.
``easydict`` (imported by the official conf.py, unused here) is stubbed when it is not installed.

Initial weights (random, with non-trivial BatchNorm running statistics) come from NumPy,
:func:`initial_state`, keyed by parameter name, so the test regenerates them without torch and the file
stays small (a resnet18 in float64 is 90 MB). Stored: the images (float16-exact values), labels,
relations, class weights, per-step losses and learning rates, a digest of the initial weights, and per
tensor of the final state (and of the stage-2 start after the hand-over) either every value (up to
``FULL_MAX`` elements: all biases, BatchNorm affine and running statistics, the small head tensors) or
values at ``NUM_SAMPLES`` fixed positions plus ``NUM_PROJ`` projections on fixed Gaussian vectors and
the size of the change over the stage.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import types
import zlib
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- setup shared with the test

NUM_AUS = 5
NEIGHBOR_NUM = 3  # K of the stage-1 FGG ('dots')
BACKBONE = "resnet18"
IMG = 40  # resnet18: 40 -> 20 -> 10 -> 10 -> 5 -> 3 -> 2, so D = 4 tokens (odd sizes exercise the padding)
BATCH = 4
STAGE1 = dict(epochs=2, batches_per_epoch=2, learning_rate=2e-3)  # 4 steps, lr at t = 0..3 of T = 4
STAGE2 = dict(epochs=3, batches_per_epoch=1, learning_rate=1e-3)  # 3 steps, lr at t = 0..2 of T = 3
WEIGHT_DECAY = 5e-4  # official conf default
BETAS = (0.9, 0.999)  # train_stage*.main
EPS = 1e-8  # torch.optim.AdamW default (train_stage*.main passes none)
LAM = 1e-3  # official conf default
SEED = 0
FULL_MAX = 4096
NUM_SAMPLES = 16
NUM_PROJ = 2


def _rng(*keys: Any) -> np.random.Generator:
  return np.random.default_rng([SEED] + [zlib.crc32(str(k).encode()) for k in keys])


def initial_state(shapes: dict[str, tuple[int, ...]], stage: int) -> dict[str, np.ndarray]:
  """Random float64 initial values of a state_dict's tensors, by name (``num_batches_tracked`` left out).

  Convolutions and linear weights ~ N(0, 2 / fan_in); BatchNorm weight 1 + N(0, 0.2^2), bias N(0, 0.1^2),
  running mean N(0, 0.3^2), running variance U(0.5, 1.5); other vectors (biases) N(0, 0.1^2).
  """
  bns = {k[: -len(".running_mean")] for k in shapes if k.endswith(".running_mean")}
  out = {}
  for key, shape in shapes.items():
    if key.endswith("num_batches_tracked"):
      continue
    g = _rng("init", stage, key)
    prefix, leaf = key.rsplit(".", 1)
    if leaf == "running_mean":
      v = 0.3 * g.standard_normal(shape)
    elif leaf == "running_var":
      v = 0.5 + g.random(shape)
    elif prefix in bns and leaf == "weight":
      v = 1.0 + 0.2 * g.standard_normal(shape)
    elif len(shape) >= 2:
      v = g.standard_normal(shape) * np.sqrt(2.0 / int(np.prod(shape[1:])))
    else:
      v = 0.1 * g.standard_normal(shape)
    out[key] = np.asarray(v, np.float64)
  return out


def digest(tensors: dict[str, np.ndarray]) -> str:
  """sha256 over names, shapes and float64 bytes (checks that the test regenerates the same weights)."""
  h = hashlib.sha256()
  for k in sorted(tensors):
    h.update(k.encode() + str(tensors[k].shape).encode() + np.ascontiguousarray(tensors[k], np.float64).tobytes())
  return h.hexdigest()


def sample_index(key: str, size: int) -> np.ndarray:
  return np.sort(_rng("sample", key).choice(size, NUM_SAMPLES, replace=False))


def projections(key: str, value: np.ndarray) -> np.ndarray:
  """``NUM_PROJ`` dot products of the flattened tensor with fixed N(0, 1) vectors (float32 draws)."""
  r = _rng("proj", key).standard_normal((NUM_PROJ, value.size), dtype=np.float32)
  return r.astype(np.float64) @ np.asarray(value, np.float64).reshape(-1)


def summarize(prefix: str, state: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Golden entries of a state: full tensors when small, else samples + projections; ``dmax``/``dnorm``
  are the largest element and the norm of ``state - ref`` (the change over the stage)."""
  out = {}
  for k, v in state.items():
    if k.endswith("num_batches_tracked"):
      continue
    v = np.asarray(v, np.float64)
    d = v - ref[k]
    out[f"{prefix}/dmax/{k}"] = np.asarray(np.max(np.abs(d)))
    out[f"{prefix}/dnorm/{k}"] = np.asarray(np.linalg.norm(d))
    if v.size <= FULL_MAX:
      out[f"{prefix}/full/{k}"] = v
    else:
      out[f"{prefix}/sample/{k}"] = v.reshape(-1)[sample_index(k, v.size)]
      out[f"{prefix}/proj/{k}"] = projections(k, v)
  return out


def make_data() -> dict[str, np.ndarray]:
  """Images (NCHW, float16-exact), 0/1 labels (every AU positive somewhere), relations, class weights."""
  g = _rng("data")
  steps = STAGE1["epochs"] * STAGE1["batches_per_epoch"] + STAGE2["epochs"] * STAGE2["batches_per_epoch"]
  images = g.standard_normal((steps, BATCH, 3, IMG, IMG)).astype(np.float16)
  labels = (g.random((steps, BATCH, NUM_AUS)) < 0.4).astype(np.float64)
  labels[:, 0, :] = 1.0  # every AU positive and negative in every batch
  labels[:, 1, :] = 0.0
  n = NUM_AUS
  relations = np.zeros((steps, BATCH, n * n))
  for j in range(n):  # the official BP4D/DISFA_deal_AU_relation formula
    for k in range(n):
      relations[:, :, j * n + k] = 2 * labels[:, :, j] + labels[:, :, k]
  # class weights as the official tool computes and writes them (fmt '%f') and train_stage*.main reads them
  flat = labels.reshape(-1, n)
  rate = np.sum(flat > 0, axis=0) / float(flat.shape[0])
  w = 1.0 / rate
  w = w / w.sum() * n
  weights = np.array([float(f"{x:f}") for x in w])
  return {"images": images, "labels": labels, "relations": relations, "class_weights": weights}


# ----------------------------------------------------------------------------- the official run


def _official_commit(path: str, given: str | None) -> str:
  if given:
    return given
  try:
    return subprocess.run(
      ["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError) as e:
    raise SystemExit(f"{path} is not a git work tree; pass --commit <hash of the checkout>") from e


class _Float64Masks:
  """``Tensor.float()`` -> float64 while active (the official GNN's 0/1 adjacency and the labels)."""

  def __init__(self, torch):
    self.torch = torch

  def __enter__(self):
    self._float = self.torch.Tensor.float
    self.torch.Tensor.float = lambda self_: self_.to(self.torch.float64)
    return self

  def __exit__(self, *exc):
    self.torch.Tensor.float = self._float


class _Recorder:
  """Wraps an official criterion: records each loss value (and the lr the step runs with)."""

  def __init__(self, criterion, optimizer, log: list, lrs: list | None = None):
    self.criterion, self.optimizer, self.log, self.lrs = criterion, optimizer, log, lrs

  def __call__(self, *args):
    loss = self.criterion(*args)
    self.log.append(loss.item())
    if self.lrs is not None:
      self.lrs.append(self.optimizer.param_groups[0]["lr"])
    return loss


def _randomize(net, torch, stage: int) -> dict[str, np.ndarray]:
  sd = net.state_dict()
  init = initial_state({k: tuple(v.shape) for k, v in sd.items()}, stage)
  with torch.no_grad():
    for k, v in init.items():
      sd[k].copy_(torch.from_numpy(v))
  return init


def _state(net) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def _import_official(path: str):
  os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the official train() moves batches to CUDA when it sees one
  sys.path.insert(0, path)
  try:
    import easydict  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:  # conf.py imports it at module level; nothing here calls its users
    stub = types.ModuleType("easydict")
    stub.EasyDict = type("EasyDict", (dict,), {"__getattr__": dict.__getitem__})
    sys.modules["easydict"] = stub
  import torch  # pylint: disable=import-outside-toplevel
  import train_stage1  # pylint: disable=import-outside-toplevel
  import train_stage2  # pylint: disable=import-outside-toplevel
  import utils  # pylint: disable=import-outside-toplevel
  from model import ANFL, MEFL  # pylint: disable=import-outside-toplevel

  for mod in (ANFL, MEFL):  # no ImageNet file needed: the weights are replaced by initial_state()
    orig = mod.resnet18
    mod.resnet18 = lambda orig=orig, **kw: orig(pretrained=False, **kw)
  return torch, train_stage1, train_stage2, utils, ANFL, MEFL


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--official", required=True, help="path of a checkout of CVI-SZU/ME-GraphAU")
  parser.add_argument("--out", default="tests/data/golden_train.npz")
  parser.add_argument("--commit", default=None, help="commit of the checkout (default: git rev-parse HEAD)")
  args = parser.parse_args(argv)
  official = os.path.abspath(args.official)
  commit = _official_commit(official, args.commit)
  torch, train_stage1, train_stage2, utils, ANFL, MEFL = _import_official(official)
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from make_golden import _CpuAsDevice0  # pylint: disable=import-outside-toplevel

  torch.manual_seed(SEED)
  data = make_data()
  images = torch.from_numpy(data["images"].astype(np.float64))
  labels = torch.from_numpy(data["labels"])
  relations = torch.from_numpy(data["relations"])
  train_weight = torch.from_numpy(data["class_weights"])
  out: dict[str, Any] = {k: v for k, v in data.items()}
  out["official_commit"] = np.asarray(commit)
  cfg = dict(
    backbone=BACKBONE,
    num_aus=NUM_AUS,
    neighbor_num=NEIGHBOR_NUM,
    img=IMG,
    batch=BATCH,
    weight_decay=WEIGHT_DECAY,
    b1=BETAS[0],
    b2=BETAS[1],
    eps=EPS,
    lam=LAM,
    seed=SEED,
  )
  for stage, s in ((1, STAGE1), (2, STAGE2)):
    cfg.update({f"s{stage}_{k}": v for k, v in s.items()})
  for k, v in cfg.items():
    out[f"cfg/{k}"] = np.asarray(v)

  # ---- stage 1 (train_stage1.main / train)
  net1 = ANFL.MEFARG(num_classes=NUM_AUS, backbone=BACKBONE, neighbor_num=NEIGHBOR_NUM, metric="dots").double()
  init1 = _randomize(net1, torch, 1)
  torch.set_default_dtype(torch.float64)  # tensors the official code creates while running (torch.eye, ...)
  out["s1/init_digest"] = np.asarray(digest(init1))
  out.update({f"s1/shape/{k}": np.asarray(v.shape, np.int64) for k, v in net1.state_dict().items()})
  opt1 = torch.optim.AdamW(net1.parameters(), betas=BETAS, lr=STAGE1["learning_rate"], weight_decay=WEIGHT_DECAY)
  losses1, lrs1 = [], []
  crit1 = _Recorder(utils.WeightedAsymmetricLoss(weight=train_weight), opt1, losses1, lrs1)
  conf1 = types.SimpleNamespace(epochs=STAGE1["epochs"], learning_rate=STAGE1["learning_rate"])
  step = 0
  with _CpuAsDevice0(torch), _Float64Masks(torch):
    for epoch in range(STAGE1["epochs"]):
      loader = []
      for _ in range(STAGE1["batches_per_epoch"]):
        loader.append((images[step], labels[step]))
        step += 1
      train_stage1.train(conf1, net1, loader, opt1, epoch, crit1)
  final1 = _state(net1)
  out["s1/loss"], out["s1/lr"] = np.asarray(losses1), np.asarray(lrs1)
  out.update(summarize("s1/final", final1, init1))

  # ---- hand-over: train_stage1.main's checkpoint -> train_stage2.main's resume (utils.load_state_dict)
  torch.set_default_dtype(torch.float32)  # the official constructors build float32 (torch.FloatTensor)
  net2 = MEFL.MEFARG(num_classes=NUM_AUS, backbone=BACKBONE).double()
  net2.head.gnn.start, net2.head.gnn.end = net2.head.gnn.start.double(), net2.head.gnn.end.double()  # 0/1
  torch.set_default_dtype(torch.float64)
  init2 = _randomize(net2, torch, 2)
  out["s2/init_digest"] = np.asarray(digest(init2))
  out.update({f"s2/shape/{k}": np.asarray(v.shape, np.int64) for k, v in net2.state_dict().items()})
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "cur_model_fold1.pth")
    torch.save({"epoch": STAGE1["epochs"] - 1, "state_dict": net1.state_dict(), "optimizer": opt1.state_dict()}, path)
    net2 = utils.load_state_dict(net2, path)
  start2 = _state(net2)
  out["s2/shared_keys"] = np.asarray(sorted(k for k in start2 if k in final1))
  out.update(summarize("s2/start", start2, init2))

  # ---- stage 2 (train_stage2.main / train)
  opt2 = torch.optim.AdamW(net2.parameters(), betas=BETAS, lr=STAGE2["learning_rate"], weight_decay=WEIGHT_DECAY)
  wa2, edge2, lrs2 = [], [], []
  crit2 = [
    _Recorder(utils.WeightedAsymmetricLoss(weight=train_weight), opt2, wa2, lrs2),
    _Recorder(torch.nn.CrossEntropyLoss(), opt2, edge2),
  ]
  conf2 = types.SimpleNamespace(epochs=STAGE2["epochs"], learning_rate=STAGE2["learning_rate"], lam=LAM)
  with _CpuAsDevice0(torch), _Float64Masks(torch):
    for epoch in range(STAGE2["epochs"]):
      loader = []
      for _ in range(STAGE2["batches_per_epoch"]):
        loader.append((images[step], labels[step], relations[step]))
        step += 1
      train_stage2.train(conf2, net2, loader, opt2, epoch, crit2)
  final2 = _state(net2)
  out["s2/wa"], out["s2/edge"], out["s2/lr"] = np.asarray(wa2), np.asarray(edge2), np.asarray(lrs2)
  out["s2/loss"] = np.asarray([w + LAM * e for w, e in zip(wa2, edge2)])  # as train_stage2.train adds them
  out.update(summarize("s2/final", final2, start2))

  np.savez_compressed(args.out, **out)
  print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB, {len(out)} arrays), official {commit}")
  print("stage 1 losses", losses1, "lrs", lrs1)
  print("stage 2 losses", out["s2/loss"].tolist(), "edge", edge2, "lrs", lrs2)


if __name__ == "__main__":
  main()
