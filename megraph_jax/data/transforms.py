"""The eval transform, defined once: shorter side to ``resize``, centre ``img_size`` crop, ImageNet normalisation.

It is the official test transform (torchvision ``Resize(256)``, ``CenterCrop(224)``, ``Normalize``) on one RGB
image; ``megraph_jax.data.input_pipeline.create_eval_dataset`` is the same on tf.data batches (tested equal).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from megraph_jax.task import IMAGENET_MEAN, IMAGENET_STD


def eval_resize(img_size: int) -> int:
  """Shorter side before the centre crop: 256 for the official 224 crop, scaled likewise for other sizes."""
  return round(img_size * 256 / 224)


def resized_size(w: int, h: int, short_side: int) -> tuple[int, int]:
  """(width, height) with the shorter side ``short_side`` and the longer ``int(short_side * long / short)``."""
  short = min(w, h)
  return (short_side, int(short_side * h / short)) if w <= h else (int(short_side * w / short), short_side)


def centre_offsets(h: int, w: int, crop: int) -> tuple[int, int]:
  """(top, left) of a centre crop, as torchvision's CenterCrop: ``int(round((h - crop) / 2))``, half to even."""
  return int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))


def eval_transform(rgb: np.ndarray, img_size: int, resize: int | None = None) -> np.ndarray:
  """RGB uint8 ``[H, W, 3]`` -> float32 ``[img_size, img_size, 3]``: (x / 255 - mean) / std of the centre crop.

  ``resize`` (default :func:`eval_resize`) is the shorter side after the bilinear (antialiased) resize.
  """
  rgb = np.asarray(rgb, np.uint8)
  h, w = rgb.shape[:2]
  nw, nh = resized_size(w, h, resize or eval_resize(img_size))
  if (nw, nh) != (w, h):  # (PIL's resize to the same size is a copy: an aligned 256 px crop skips it)
    rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BILINEAR))
  top, left = centre_offsets(nh, nw, img_size)
  x = rgb[top : top + img_size, left : left + img_size].astype(np.float32)
  x /= 255.0
  x -= IMAGENET_MEAN
  x /= IMAGENET_STD
  return x
