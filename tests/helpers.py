"""Test helpers (imported by the tests; ``conftest.py`` holds only fixtures and process-wide settings): the tiny
synthetic set and the tiny training config every end-to-end test trains."""

import json
import os
import sys
import zlib

import ml_collections
import numpy as np
from PIL import Image

from megraph_jax import task
from megraph_jax.models.swin import relative_position_index

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_AUS = ("AU1", "AU2", "AU6", "AU12")
TINY_SYNTHETIC = dict(num_subjects=3, frames_per_subject=16, image_size=40, seed=0)  # fold 1: 32 train, 16 test


def tiny_config(cache_dir: str, **overrides) -> ml_collections.ConfigDict:
  """configs/synthetic.py shrunk to ResNet-18 at 32 px, 4 AUs, batch 8 (4 steps per epoch), 2 + 1 epochs."""
  from configs import synthetic  # pylint: disable=import-outside-toplevel

  config = synthetic.get_config()
  config.dataset.au_names = TINY_AUS
  config.dataset.synthetic.cache_dir = cache_dir
  for k, v in TINY_SYNTHETIC.items():
    setattr(config.dataset.synthetic, k, v)
  config.dataset.image_size = 36
  config.dataset.crop_size = 32
  config.batch_size = 8
  config.eval_batch_size = 8
  config.stage1.epochs = 2
  config.stage2.epochs = 1
  config.log_every_steps = 2
  config.update_from_flattened_dict(overrides)  # dotted keys, e.g. {"stage2.init": "none"}
  return config


def tiny_main_args(cache_dir: str, workdir: str, *overrides: str) -> list[str]:
  """``python main.py`` arguments running ``tiny_config`` (its data and sizes) in ``workdir``, plus ``overrides``."""
  s = TINY_SYNTHETIC
  return [
    sys.executable,
    os.path.join(REPO, "main.py"),
    "--config=" + os.path.join(REPO, "configs", "synthetic.py"),
    f"--workdir={workdir}",
    f"--config.dataset.au_names=({','.join(repr(a) for a in TINY_AUS)})",
    f"--config.dataset.synthetic.cache_dir={cache_dir}",
    f"--config.dataset.synthetic.num_subjects={s['num_subjects']}",
    f"--config.dataset.synthetic.frames_per_subject={s['frames_per_subject']}",
    f"--config.dataset.synthetic.image_size={s['image_size']}",
    "--config.dataset.image_size=36",
    "--config.dataset.crop_size=32",
    "--config.batch_size=8",
    "--config.eval_batch_size=8",
    "--config.stage1.epochs=2",
    "--config.stage2.epochs=1",
    "--config.log_every_steps=2",
    *overrides,
  ]


def write_lists(root, name, split, paths, labels, fold=1):
  """The official list files of one split: ``{name}_{split}_img_path_fold{fold}.txt`` and its labels."""
  os.makedirs(os.path.join(root, "list"), exist_ok=True)
  with open(os.path.join(root, "list", f"{name}_{split}_img_path_fold{fold}.txt"), "w") as f:
    f.write("".join(p + "\n" for p in paths))
  np.savetxt(os.path.join(root, "list", f"{name}_{split}_label_fold{fold}.txt"), labels, fmt="%d")


def id_dataset(root, n, num_aus=3):
  """Constant-colour PNGs whose red value encodes the index (crop/flip/resize keep it)."""
  paths = []
  for k in range(n):
    p = f"S1/{k}.png"
    os.makedirs(os.path.join(root, "img", "S1"), exist_ok=True)
    Image.fromarray(np.full((40, 48, 3), (10 + 20 * k, 50, 90), np.uint8)).save(os.path.join(root, "img", p))
    paths.append(p)
  labels = (np.arange(n)[:, None] + np.arange(num_aus)[None]) % 2
  write_lists(str(root), "X", "train", paths, labels)
  write_lists(str(root), "X", "test", paths, labels)
  return str(root)


def batch_ids(batch):
  """The indices ``id_dataset`` encoded in a batch's images (after ImageNet normalisation)."""
  red = batch["image"][:, :, :, 0] * task.IMAGENET_STD[0] + task.IMAGENET_MEAN[0]  # [B, H, W] in [0, 1]
  v = red.reshape(red.shape[0], -1).mean(1) * 255
  return np.rint((v - 10) / 20).astype(int).tolist()


# Buffers a seeded state_dict leaves alone: integer indices / counters and Swin's attention masks (rebuilt by us).
FIXED_BUFFERS = ("num_batches_tracked", "relative_position_index", "attn_mask")


def seeded_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
  """Random float32 tensors for a state_dict's keys, each drawn from a generator seeded by (``seed``, key name).

  tools/make_opengraphau_golden.py puts these into the official PyTorch models; tests rebuild the same tensors from
  the stored key names, so golden files hold no weights. Scales keep a deep random network finite: weights
  N(0, 1/fan_in), norm scales 1 + N(0, 0.1^2), biases N(0, 0.1^2), BatchNorm means N(0, 0.1^2), variances U(0.5, 1.5).
  """
  out = {}
  for key, shape in shapes.items():
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
      v = rng.uniform(0.5, 1.5, shape)
    elif leaf == "weight" and len(shape) == 1:  # BatchNorm / LayerNorm scale
      v = 1.0 + 0.1 * rng.standard_normal(shape)
    elif len(shape) >= 2 and leaf != "relative_position_bias_table":
      v = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    else:  # biases, running means, q/v biases, relative position bias tables
      v = 0.1 * rng.standard_normal(shape)
    out[key] = v.astype(np.float32)
  return out


def seeded_images(seed: int, n: int, size: int) -> np.ndarray:
  """Normalised-looking float32 NHWC inputs ``[n, size, size, 3]`` drawn from ``seed``."""
  return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def seeded_photo(seed: int, height: int, width: int) -> np.ndarray:
  """A smooth RGB uint8 picture ``[height, width, 3]`` (gradients + blobs) of any size, drawn from ``seed``."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  img = np.zeros((height, width, 3))
  for c in range(3):
    for _ in range(4):
      cy, cx, r = rng.uniform(0, 1, 3)
      img[..., c] += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (0.02 + 0.1 * r))
    img[..., c] += rng.uniform(-1, 1) * x + rng.uniform(-1, 1) * y
  img += 0.05 * rng.standard_normal(img.shape)
  img = (img - img.min()) / (img.max() - img.min())
  return (255 * img).round().astype(np.uint8)


def official_tensors(golden, prefix: str, seed: int) -> dict[str, np.ndarray]:
  """The state_dict tools/make_opengraphau_golden.py put into the official model ``prefix`` of the golden file
  (``golden``: its arrays): seeded floats plus the fixed buffers' values."""

  shapes = {k: tuple(v) for k, v in json.loads(str(golden[f"{prefix}/keys"])).items()}
  tensors = seeded_state_dict({k: s for k, s in shapes.items() if not k.endswith(FIXED_BUFFERS)}, seed)
  for k, s in shapes.items():
    if k.endswith("num_batches_tracked"):
      tensors[k] = np.zeros(s, np.int64)
    elif k.endswith("relative_position_index"):
      tensors[k] = relative_position_index(7)
    elif k.endswith("attn_mask"):
      tensors[k] = np.zeros(s, np.float32)  # a buffer we rebuild; its value is not read
  return tensors


def write_official_pth(tensors, path):
  """As the official training saves it: {'state_dict': ...} with DataParallel's 'module.' prefix."""
  import torch  # pylint: disable=import-outside-toplevel  # only the tests that write .pth files load it

  torch.save(
    {"epoch": 3, "state_dict": {"module." + k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}}, path
  )


# The whole OpenGraphAU models of tools/make_opengraphau_golden.py ``full/*`` (tests/test_opengraphau.py checks them):
# name: (backbone, stage, input side, batch, weight seed); the tool also records float64 for its FLOAT64 cases
OPENGRAPHAU_FULL = {
  "r18_s1": ("resnet18", 1, 64, 2, 1),
  "r18_s2": ("resnet18", 2, 64, 2, 2),
  "r50_s1": ("resnet50", 1, 64, 2, 3),
  "r50_s2": ("resnet50", 2, 64, 2, 4),
  "swint_s1": ("swin_transformer_tiny", 1, 224, 1, 5),
  "swinb_s1": ("swin_transformer_base", 1, 224, 1, 6),
  "swinb_s2": ("swin_transformer_base", 2, 224, 1, 7),
  "mae_s1": ("mae_base_patch16_224", 1, 224, 1, 8),
}
