"""tf.data batches over a split of a dataset (``megraph_jax.data.datasets``), augmented as the official transforms.

Training: resize the shorter side to ``image_size`` (bilinear, antialiased like PIL; skipped, exactly, for an image
of that size already), random ``crop_size`` crop at a uniform offset, random horizontal flip: uint8 crops, shipped
with each image's ColorJitter(brightness=.4, contrast=.4, saturation=.4) draws; the train step applies the jitter
and the ImageNet normalisation on the device (``megraph_jax.data.device_augment``). Evaluation resizes,
centre-crops and normalises here (float32 batches). All randomness is drawn in NumPy from (seed, epoch) per position
of the global epoch order, so batches do not depend on the number of processes.

An image that is missing, truncated or not an image raises a ``DatasetError`` naming it, its list file
and line when the batch holding it is read (``create_*_dataset(...).as_numpy_iterator()``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from megraph_jax import optional, task
from megraph_jax.data import device_augment
from megraph_jax.data.datasets import SplitData
from megraph_jax.errors import DatasetError

if TYPE_CHECKING:
  import tensorflow as tf


def num_train_steps_per_epoch(num_examples: int, global_batch: int) -> int:
  """Full global batches per epoch (the remainder is dropped)."""
  if global_batch <= 0:
    raise ValueError(f"global_batch must be positive, got {global_batch}")
  return num_examples // global_batch


def num_eval_steps(num_examples: int, global_batch: int) -> int:
  """Eval batches per pass (the last one padded)."""
  if global_batch <= 0:
    raise ValueError(f"global_batch must be positive, got {global_batch}")
  return -(-num_examples // global_batch)


# ------------------------------------------------------------------------------------------------
# tf.data.


def _root(data: SplitData, root: str | None) -> str:
  """The dataset root of ``data`` (``root`` when given, for a SplitData not read from a dataset)."""
  root = data.root if root is None else root
  if not root:
    raise ValueError("this SplitData carries no dataset root: pass root=")
  return root


def _check_shard(batch_size: int, process_index: int, process_count: int) -> None:
  """Validates per-process batch and shard arguments."""
  if batch_size <= 0:
    raise ValueError(f"batch_size (per process) must be positive, got {batch_size}")
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")


def _decode_resize(path: tf.Tensor, image_size: int, *, uint8: bool = False) -> tf.Tensor:
  """Reads an image file, decodes it to RGB and resizes its shorter side: float32 [H', W', 3] in [0, 255].

  ``uint8``: the resized image rounded to uint8 (as PIL's resize). An image of the target size already is returned
  as decoded (the antialiased bilinear resize to the same size is the identity, exactly, at ~4x a JPEG decode's cost).
  """
  tf = optional.tensorflow()
  img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  img.set_shape([None, None, 3])
  shape = tf.shape(img)
  h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
  short = tf.minimum(h, w)
  size = tf.constant(image_size, tf.float64)
  # As torchvision Resize(int): the short side becomes image_size, the long int(image_size * long / short).
  nh = tf.cast(tf.where(h <= w, size, tf.floor(size * h / short)), tf.int32)
  nw = tf.cast(tf.where(h <= w, tf.floor(size * w / short), size), tf.int32)

  def resized():
    out = tf.image.resize(img, tf.stack([nh, nw]), method="bilinear", antialias=True)
    return tf.cast(tf.floor(tf.clip_by_value(out, 0.0, 255.0) + 0.5), tf.uint8) if uint8 else out

  same = tf.logical_and(tf.equal(shape[0], nh), tf.equal(shape[1], nw))
  return tf.cond(same, lambda: img if uint8 else tf.cast(img, tf.float32), resized)


def _normalise(img: tf.Tensor) -> tf.Tensor:
  """[0, 1] RGB -> ImageNet-normalised float32 (the eval batches; training's is ``device_augment.normalise``)."""
  tf = optional.tensorflow()
  return (img - tf.constant(task.IMAGENET_MEAN, tf.float32)) / tf.constant(task.IMAGENET_STD, tf.float32)


def _full_paths(root: str, data: SplitData, idx: np.ndarray) -> np.ndarray:
  """Absolute image paths of the given example indices."""
  img_dir = os.path.join(root, "img")
  return np.array([os.path.join(img_dir, data.paths[i]) for i in idx], dtype=object)


def _op_message(e: Exception) -> str:
  """A TensorFlow op error's message without its graph-function and op decorations."""
  msg = getattr(e, "message", None) or str(e)
  msg = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", msg)
  msg = re.sub(r"\s*\[\[\{\{node .*", "", msg, flags=re.S)
  msg = re.sub(r"\s*\[Op:.*", "", msg, flags=re.S)
  return " ".join(msg.split())[:300] or type(e).__name__


def _find_bad_image(data: SplitData, root: str, indices: np.ndarray, image_size: int) -> DatasetError | None:
  """The first of ``indices`` whose image is missing or does not decode (read eagerly as the pipeline reads it)."""
  tf = optional.tensorflow()
  img_dir = os.path.join(root, "img")
  bad = []
  for i in dict.fromkeys(int(i) for i in indices):
    full = os.path.join(img_dir, data.paths[i])
    if not os.path.isfile(full):
      bad.append((i, full, "does not exist"))
      continue
    try:
      _decode_resize(tf.constant(full), image_size)
    except tf.errors.OpError as e:
      bad.append((i, full, f"cannot be read as an image ({_op_message(e)})"))
  if not bad:
    return None
  i, full, problem = bad[0]
  if data.img_list:
    base = os.path.basename(data.img_list)
    where, fix = (
      f"{base} line {i + 1}",
      (f" (listed in {data.img_list}); replace the image, or delete that line there and in the label list"),
    )
  else:
    where, fix = f"image list entry {i + 1}", ""
  more = f" ({len(bad) - 1} more bad image(s) in the same batch)" if len(bad) > 1 else ""
  return DatasetError(f"{where}: image {full} {problem}{more}{fix}")


class CheckedDataset:
  """A ``tf.data.Dataset`` of batches whose iteration turns a bad image into a DatasetError naming it.

  Iterating (``as_numpy_iterator()`` or ``iter``) runs the tf.data pipeline unchanged. When TensorFlow
  fails on batch k, ``locate(k)`` re-reads that batch's images (its files follow from the deterministic
  order) and the error names the first bad one, its list file and line; other errors pass through.
  Anything else (``element_spec``, ``take``, ...) is the wrapped ``dataset``'s.
  """

  def __init__(self, dataset: tf.data.Dataset, locate: Callable[[int], DatasetError | None]):
    self.dataset = dataset
    self._locate = locate

  def as_numpy_iterator(self) -> Iterator[dict[str, np.ndarray]]:
    """Batches as NumPy dicts (``tf.data.Dataset.as_numpy_iterator``)."""
    return self._iterate(self.dataset.as_numpy_iterator())

  def __iter__(self) -> Iterator[dict[str, tf.Tensor]]:
    return self._iterate(iter(self.dataset))

  def __len__(self) -> int:
    return len(self.dataset)

  def __getattr__(self, name: str):
    if name.startswith("__") or name in ("dataset", "_locate"):  # (copy/pickle probe before __init__)
      raise AttributeError(name)
    return getattr(self.dataset, name)

  def _iterate(self, it):
    errors = optional.tensorflow().errors
    k = 0  # Batches yielded so far: the failing one is batch k (the order is deterministic).
    while True:
      try:
        batch = next(it)
      except StopIteration:
        return
      except errors.OpError as e:  # Decode errors are InvalidArgumentError, a missing file NotFoundError.
        found = self._locate(k)
        if found is None:
          raise
        raise found from e
      yield batch
      k += 1


def _checked(
  ds: tf.data.Dataset, data: SplitData, root: str, idx: np.ndarray, batch_size: int, image_size: int
) -> CheckedDataset:
  """``ds`` (batches of ``batch_size`` of the examples ``idx``, in order) with errors that name the bad image."""
  return CheckedDataset(
    ds, lambda k: _find_bad_image(data, root, idx[k * batch_size : (k + 1) * batch_size], image_size)
  )


def _options(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Deterministic element order despite parallel decoding."""
  tf = optional.tensorflow()
  opts = tf.data.Options()
  opts.deterministic = True
  return ds.with_options(opts)


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The global shuffled order of an epoch: a permutation ``[M]`` derived from (seed, epoch)."""
  return np.random.default_rng([seed, epoch, 0]).permutation(num_examples)


def _prepare(
  data: SplitData,
  root: str | None,
  batch_size: int,
  image_size: int,
  crop_size: int,
  process_index: int,
  process_count: int,
) -> tuple[str, int, int]:
  """Checks a pipeline's arguments; (image root, number of examples, global batch)."""
  _check_shard(batch_size, process_index, process_count)
  if crop_size > image_size:
    raise ValueError(f"crop_size {crop_size} must be <= image_size {image_size}")
  return _root(data, root), data.num_examples, batch_size * process_count


def create_train_dataset(
  data: SplitData,
  *,
  root: str | None = None,
  batch_size: int,
  image_size: int = 256,
  crop_size: int = 224,
  seed: int = 0,
  epoch: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  color_jitter: bool = True,
  random_flip: bool = True,
  start_step: int = 0,
) -> CheckedDataset:
  """One training epoch of this process's batches {"image", "label", "relation"[, "jitter"]}, cropped and flipped.

  Shapes: image uint8 ``[B, crop, crop, 3]`` (NHWC pixels: resized, random crop, random flip), label float32
  ``[B, N]``, relation int32 ``[B, N*N]``, and with ``color_jitter`` each image's ColorJitter steps float32
  ``[B, 3, 3]`` (``device_augment.jitter_slots``); the train step makes them model inputs
  (``device_augment.model_images``: jitter, ImageNet normalisation). Images are read from ``data.root`` (or
  ``root``). Global batch g of the epoch is ``epoch_order(...)[g*B*P:(g+1)*B*P]``; process p takes its p-th slice of
  B. The remainder is dropped; every process yields num_train_steps_per_epoch batches, less ``start_step`` skipped
  ones (a mid-epoch resume that decodes nothing it skips and gives the same later batches). A missing or
  undecodable image raises DatasetError naming it and its list line when its batch is read (see CheckedDataset).
  """
  tf = optional.tensorflow()
  columns, root, idx = _train_columns(
    data, root, batch_size, image_size, crop_size, seed, epoch, process_index, process_count, start_step
  )
  if not color_jitter:
    del columns["jitter"]  # (drawn either way: the other draws do not depend on it)

  def load(ex):
    img = _decode_resize(ex.pop("path"), image_size, uint8=True)
    a = ex.pop("aug")
    shape = tf.shape(img)
    oy = tf.minimum(tf.cast(a[0] * tf.cast(shape[0] - crop_size + 1, tf.float32), tf.int32), shape[0] - crop_size)
    ox = tf.minimum(tf.cast(a[1] * tf.cast(shape[1] - crop_size + 1, tf.float32), tf.int32), shape[1] - crop_size)
    img = img[oy : oy + crop_size, ox : ox + crop_size]
    if random_flip:  # (drawn either way: the crops do not depend on it)
      img = tf.cond(a[2] < 0.5, lambda: tf.reverse(img, [1]), lambda: img)  # (~10x faster than img[:, ::-1])
    ex["image"] = tf.ensure_shape(img, [crop_size, crop_size, 3])
    return ex

  ds = tf.data.Dataset.from_tensor_slices(columns)
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return _checked(_options(ds), data, root, idx, batch_size, image_size)


def _train_columns(
  data: SplitData,
  root: str | None,
  batch_size: int,
  image_size: int,
  crop_size: int,
  seed: int,
  epoch: int,
  process_index: int,
  process_count: int,
  start_step: int,
) -> tuple[dict[str, np.ndarray], str, np.ndarray]:
  """The epoch's examples of this process, in order, before decoding: ({"path", "label", "relation", "aug" (crop y,
  crop x, flip draws [M', 3]), "jitter" [M', 3, 3]}, image root, example indices)."""
  root, m, gb = _prepare(data, root, batch_size, image_size, crop_size, process_index, process_count)
  steps = num_train_steps_per_epoch(m, gb)
  if steps == 0:
    raise ValueError(
      f"{m} training examples are fewer than one global batch of {gb} "
      f"({batch_size} per process x {process_count} processes)"
    )
  order = epoch_order(m, seed, epoch)
  rng = np.random.default_rng([seed, epoch, 1])
  crop_flip = rng.random((m, 3)).astype(np.float32)  # crop y, crop x, flip
  slots = device_augment.jitter_slots(rng.uniform(0.6, 1.4, (m, 3)), rng.integers(0, 6, m))  # [M, 3, 3]
  if not 0 <= start_step <= steps:
    raise ValueError(f"start_step must be in [0, {steps}], got {start_step}")
  pos = np.arange(steps * gb).reshape(steps, process_count, batch_size)[start_step:, process_index].reshape(-1)
  idx = order[pos]
  columns = {
    "path": _full_paths(root, data, idx).astype(str),
    "label": data.labels[idx].astype(np.float32),
    "relation": data.relations[idx].astype(np.int32),
    "aug": crop_flip[pos],
    "jitter": slots[pos],
  }
  return columns, root, idx


def create_eval_dataset(
  data: SplitData,
  *,
  root: str | None = None,
  batch_size: int,
  image_size: int = 256,
  crop_size: int = 224,
  process_index: int = 0,
  process_count: int = 1,
) -> CheckedDataset:
  """Fixed-order eval batches {"image", "label", "relation", "mask" [B] f32, "index" [B] i32}.

  The data are padded to a whole number of global batches; padding rows repeat image 0 with
  mask 0 and index -1, so each real image appears exactly once over all processes. A missing or
  undecodable image raises DatasetError naming it and its list line when its batch is read.
  """
  tf = optional.tensorflow()
  root, m, gb = _prepare(data, root, batch_size, image_size, crop_size, process_index, process_count)
  steps = num_eval_steps(m, gb)
  pos = np.arange(steps * gb).reshape(steps, process_count, batch_size)[:, process_index].reshape(-1)
  real = pos < m
  idx = np.where(real, pos, 0)
  ds = tf.data.Dataset.from_tensor_slices(
    {
      "path": _full_paths(root, data, idx).astype(str),
      "label": data.labels[idx].astype(np.float32),
      "relation": data.relations[idx].astype(np.int32),
      "mask": real.astype(np.float32),
      "index": np.where(real, pos, -1).astype(np.int32),
    }
  )

  def load(ex):
    img = _decode_resize(ex.pop("path"), image_size)
    shape = tf.shape(img)
    # As torchvision CenterCrop: int(round((h - crop) / 2.0)), half to even.
    oy = tf.cast(tf.round(tf.cast(shape[0] - crop_size, tf.float32) / 2.0), tf.int32)
    ox = tf.cast(tf.round(tf.cast(shape[1] - crop_size, tf.float32) / 2.0), tf.int32)
    img = img[oy : oy + crop_size, ox : ox + crop_size] / 255.0
    ex["image"] = tf.ensure_shape(_normalise(img), [crop_size, crop_size, 3])
    return ex

  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return _checked(_options(ds), data, root, idx, batch_size, image_size)
