"""The per-pixel half of the training augmentation, run inside the jitted train step (on the device), in float32.

The host pipeline (``input_pipeline.create_train_dataset``) decodes, resizes, crops and flips, and ships uint8 crops
``[B, H, W, 3]`` with each image's colour-jitter draws ``jitter`` ``[B, 3, 3]`` (:func:`jitter_slots`); the train
step turns them into model inputs with :func:`model_images`: ``x / 255``, the colour jitter, the ImageNet
normalisation (``task.IMAGENET_MEAN`` / ``task.IMAGENET_STD``). Shipping uint8 moves 4x fewer bytes, and a CPU core
then only decodes and crops.

The colour jitter is torchvision's ``ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)`` (the official
image_train), as its float-tensor kernels ``adjust_brightness`` / ``adjust_contrast`` / ``adjust_saturation``
compute it: each step is ``_blend(img, ref, f) = clamp(f * img + (1 - f) * ref, 0, 1)`` with ref = 0 (brightness),
the mean of the image's grey level (contrast), or the grey image (saturation); the three factors are uniform in
[0.6, 1.4] and the steps run in one of the 6 orders, drawn uniformly (``ColorJitter.get_params``'s randperm). The
grey level is ITU-R 601-2 luma with PIL's weights (0.299, 0.587, 0.114; torchvision's tensor kernel has 0.2989 R),
PIL's ``convert('L')`` that the official code's PIL images go through. Written branch-free (the same arithmetic
for every order) and as plain elementwise sums, no dot product: a GPU's TF32 matmuls would round the grey level.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from megraph_jax import task

# The 6 orders of (brightness 0, contrast 1, saturation 2) that ColorJitter draws from.
JITTER_ORDERS = np.array([(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])


def jitter_slots(factors: np.ndarray, order: np.ndarray) -> np.ndarray:
  """Per-image colour-jitter steps float32 ``[M, 3, 3]``: (factor, is_contrast, is_saturation) in application order.

  ``factors`` ``[M, 3]`` are (brightness, contrast, saturation); ``order`` ``[M]`` indexes ``JITTER_ORDERS``. Drawn
  on the host (NumPy, from the pipeline's seed and epoch), read by :func:`color_jitter`.
  """
  ops = JITTER_ORDERS[order]  # [M, 3] op id per step
  f = np.take_along_axis(factors, ops, axis=1)
  return np.stack([f, ops == 1, ops == 2], axis=-1).astype(np.float32)


def grayscale(img: jax.Array) -> jax.Array:
  """ITU-R 601-2 luma of RGB ``[..., H, W, 3]`` (PIL's ``convert('L')`` weights, unrounded): ``[..., H, W, 1]``."""
  return (0.299 * img[..., 0:1] + 0.587 * img[..., 1:2]) + 0.114 * img[..., 2:3]


def color_jitter(img: jax.Array, slots: jax.Array) -> jax.Array:
  """torchvision's ColorJitter on float RGB in [0, 1] ``[..., H, W, 3]``, the steps of ``slots`` ``[..., 3, 3]``.

  Step k of an image is ``clip(f * x + (1 - f) * ref, 0, 1)`` with ``(f, is_contrast, is_saturation) =
  slots[..., k, :]`` and ref = ``is_saturation * grey + is_contrast * mean(grey)`` (0 for brightness).
  """
  for k in range(3):
    f, is_con, is_sat = (slots[..., k, i][..., None, None, None] for i in range(3))
    gray = grayscale(img)
    ref = is_sat * gray + is_con * jnp.mean(gray, axis=(-3, -2, -1), keepdims=True)
    img = jnp.clip(f * img + (1.0 - f) * ref, 0.0, 1.0)
  return img


def normalise(img: jax.Array) -> jax.Array:
  """[0, 1] RGB -> ImageNet-normalised: ``(x - mean) / std`` per channel."""
  mean = jnp.asarray(task.IMAGENET_MEAN, img.dtype)
  std = jnp.asarray(task.IMAGENET_STD, img.dtype)
  return (img - mean) / std


def model_images(image: jax.Array, jitter: jax.Array | None = None) -> jax.Array:
  """A training batch's model inputs: uint8 pixels ``[B, H, W, 3]`` -> float32 ``normalise(color_jitter(x / 255))``.

  Without ``jitter`` (colour jitter off) only the normalisation. Float images are taken as model inputs already
  (normalised by their maker, e.g. the eval pipeline or a test) and returned unchanged; they take no ``jitter``.
  """
  if not jnp.issubdtype(image.dtype, jnp.integer):
    if jitter is not None:
      raise ValueError(f"colour jitter needs uint8 pixels, got {image.dtype} images (already normalised)")
    return image
  img = image.astype(jnp.float32) / 255.0
  if jitter is not None:
    img = color_jitter(img, jitter.astype(jnp.float32))
  return normalise(img)
