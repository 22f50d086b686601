"""MTCNN (Zhang et al. 2016: joint face detection and alignment by three cascaded networks) in JAX / Flax NNX.

The three networks (PNet, RNet, ONet) have the layouts of the ``mtcnn`` package's Keras models and read its weights
(``mtcnn/assets/weights/*.lz4``, joblib pickles of numpy arrays) without importing the package or TensorFlow. The
detection procedure follows that package's version of the algorithm, so that both give the same faces:

  1. image pyramid: levels ``(12 / min_face_size) * scale_factor**k`` of the image, area-resized (each output pixel
     the mean of the input area it covers), as many levels as the image's shorter side allows;
  2. PNet on every level: a face score and a box regression per 12 px window (stride 2); windows scoring above
     ``threshold_pnet`` become boxes (regressed at once), non-maximum suppression (NMS) per level (IoU 0.5), then
     across levels (0.7), boxes squared;
  3. RNet on each box's 24 px crop (bilinear, zero outside the image): new score, regression, ``threshold_rnet``,
     NMS 0.7, squared;
  4. ONet on 48 px crops: score, regression and the five landmarks (relative to the squared box), ``threshold_onet``,
     NMS 0.7 by intersection over the smaller box.

The package's NMS is not the greedy one: a box is dropped when any higher-scoring box overlaps it beyond the
threshold, even one that was itself dropped. It is a masked matrix, so it runs on the accelerator as it is.

Everything runs jitted on fixed shapes, three programs per batch: (1) all pyramid levels area-resized onto one
canvas (from integer prefix sums, TensorFlow's ``ResizeArea`` to float32 rounding), PNet once over the canvas (each
level's edges masked as its own padding, so every level gets exactly its own outputs), the best ``capacity``
windows, both NMS; (2) RNet; (3) ONet. Frames are zero-padded to multiples of 64 px and batches, box counts and the
capacity rounded up to powers of two, with what varies inside a shape (pyramid layout, image size, number of
boxes) passed as data and masks, so that nearby image sizes share compiled programs and nothing recompiles per
frame. The capacity grows (once, recompiling) when a batch has more windows above the threshold, so the result is
always the exact one. Rows out: ``[image, x0, y0, x1, y1, score, 5 landmark x, 5 landmark y]`` in index pixels (the
centre of pixel ``i`` is ``i``), boxes clipped to the image, as the package's ``detect_faces(...,
output_type="numpy", box_format="xyxy")``.

Differences from the package: levels smaller than 11 px are left out (the package fails there and reports no face
at all for the whole batch), and equal scores may be ordered differently (the package's order of ties depends on
numpy's sort), which can only matter for boxes of exactly equal score.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from megraph_jax import optional

PNET_WINDOW = 12  # px: PNet's window (stride 2 on each pyramid level)
RNET_SIZE = 24
ONET_SIZE = 48
SCALE_FACTOR = 0.709  # each pyramid level 0.709 of the one before (the published value)
THRESHOLDS = dict(threshold_pnet=0.6, threshold_rnet=0.7, threshold_onet=0.8)  # the package's defaults
NMS_PNET_LEVEL, NMS_PNET, NMS_RNET, NMS_ONET = 0.5, 0.7, 0.7, 0.7
CAPACITY = 512  # PNet windows above the threshold kept (best first) per frame; grown when a batch has more
CHUNK = 8  # RNet and ONet run on this many crops at a time (batch-invariant results; box counts are multiples)
RNET_BOXES = 32  # RNet's box count is at least this (a power of two): a video's keyframes share one compiled shape
MIN_LEVEL = 11  # px: the smallest level side PNet gives an output for (3x3 conv, 2x2 pool, 3x3, 3x3)
_HIGHEST = lax.Precision.HIGHEST  # float32 everywhere (TF32 / bf16 passes would move scores by ~1e-3)


# ------------------------------------------------------------------------------------------------
# Networks.


class Conv(nnx.Module):
  """Convolution NHWC, VALID padding, stride 1; kernel HWIO (as Keras stores it). Made with zero weights: the real
  ones come from :func:`set_weights` (no random initialisation, so nothing is compiled before the first frame)."""

  def __init__(self, cin: int, cout: int, k: int):
    self.kernel = nnx.Param(jnp.asarray(np.zeros((k, k, cin, cout), np.float32)))
    self.bias = nnx.Param(jnp.asarray(np.zeros((cout,), np.float32)))

  def __call__(self, x: jax.Array) -> jax.Array:
    y = lax.conv_general_dilated(
      x, self.kernel[...], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HIGHEST
    )
    return y + self.bias[...]


class Dense(nnx.Module):
  """``x @ kernel + bias``, kernel ``[in, out]`` (as Keras stores it); zero weights until :func:`set_weights`."""

  def __init__(self, cin: int, cout: int):
    self.kernel = nnx.Param(jnp.asarray(np.zeros((cin, cout), np.float32)))
    self.bias = nnx.Param(jnp.asarray(np.zeros((cout,), np.float32)))

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.dot(x, self.kernel[...], precision=_HIGHEST) + self.bias[...]


class PReLU(nnx.Module):
  """``x`` where positive, ``alpha * x`` elsewhere; ``alpha`` per channel (shared over space)."""

  def __init__(self, features: int):
    self.alpha = nnx.Param(jnp.asarray(np.full((features,), 0.25, np.float32)))

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.where(x >= 0, x, self.alpha[...] * x)


def max_pool(x: jax.Array, size: int, stride: int, padding: str) -> jax.Array:
  """Max pooling NHWC; ``"SAME"`` pads with -inf, the extra row/column at the end (TensorFlow's convention)."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, size, size, 1), (1, stride, stride, 1), padding)


def _flatten_wh(x: jax.Array) -> jax.Array:
  """Flattens NHWC as the Keras models do (``Permute((2, 1, 3))`` then ``Flatten``): width, height, channel order."""
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


class PNet(nnx.Module):
  """Proposal network, fully convolutional: ``[B, H, W, 3]`` -> box regression ``[B, h, w, 4]`` and face / not-face
  probabilities ``[B, h, w, 2]``, one per 12 px window at stride 2 (``h = ceil((H - 2) / 2) - 4``)."""

  def __init__(self):
    self.conv1, self.prelu1 = Conv(3, 10, 3), PReLU(10)
    self.conv2, self.prelu2 = Conv(10, 16, 3), PReLU(16)
    self.conv3, self.prelu3 = Conv(16, 32, 3), PReLU(32)
    self.conv4_1, self.conv4_2 = Conv(32, 4, 1), Conv(32, 2, 1)

  def layers(self) -> list[nnx.Module]:
    """The layers with weights, in the order of the Keras model's ``get_weights()``."""
    return [self.conv1, self.prelu1, self.conv2, self.prelu2, self.conv3, self.prelu3, self.conv4_1, self.conv4_2]

  def __call__(self, x: jax.Array, inside: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``inside`` (optional, ``[H - 2, W - 2]``) marks the first convolution's outputs that belong to an image; the
    others are left out of the pooling as its SAME padding is, so that several images (the levels of a pyramid)
    can share one canvas: each gives exactly its own outputs on its cells."""
    x = self.prelu1(self.conv1(x))
    if inside is not None:
      x = jnp.where(inside[..., None], x, -jnp.inf)
    x = max_pool(x, 2, 2, "SAME")
    if inside is not None:
      x = jnp.where(jnp.isfinite(x), x, 0.0)  # pooled cells wholly outside: read only by cells outside
    x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
    return self.conv4_1(x), jax.nn.softmax(self.conv4_2(x), axis=-1)


class RNet(nnx.Module):
  """Refinement network: 24 px crops ``[N, 24, 24, 3]`` -> box regression ``[N, 4]``, probabilities ``[N, 2]``."""

  def __init__(self):
    self.conv1, self.prelu1 = Conv(3, 28, 3), PReLU(28)
    self.conv2, self.prelu2 = Conv(28, 48, 3), PReLU(48)
    self.conv3, self.prelu3 = Conv(48, 64, 2), PReLU(64)
    self.fc4, self.prelu4 = Dense(576, 128), PReLU(128)
    self.fc5_1, self.fc5_2 = Dense(128, 4), Dense(128, 2)

  def layers(self) -> list[nnx.Module]:
    """The layers with weights, in the order of the Keras model's ``get_weights()``."""
    return [
      self.conv1, self.prelu1, self.conv2, self.prelu2, self.conv3, self.prelu3, self.fc4, self.prelu4,
      self.fc5_1, self.fc5_2,
    ]  # fmt: skip

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = max_pool(self.prelu1(self.conv1(x)), 3, 2, "SAME")
    x = max_pool(self.prelu2(self.conv2(x)), 3, 2, "VALID")
    x = self.prelu4(self.fc4(_flatten_wh(self.prelu3(self.conv3(x)))))
    return self.fc5_1(x), jax.nn.softmax(self.fc5_2(x), axis=-1)


class ONet(nnx.Module):
  """Output network: 48 px crops ``[N, 48, 48, 3]`` -> box regression ``[N, 4]``, landmarks ``[N, 10]`` (five x then
  five y, fractions of the box) and probabilities ``[N, 2]``."""

  def __init__(self):
    self.conv1, self.prelu1 = Conv(3, 32, 3), PReLU(32)
    self.conv2, self.prelu2 = Conv(32, 64, 3), PReLU(64)
    self.conv3, self.prelu3 = Conv(64, 64, 3), PReLU(64)
    self.conv4, self.prelu4 = Conv(64, 128, 2), PReLU(128)
    self.fc5, self.prelu5 = Dense(1152, 256), PReLU(256)
    self.fc6_1, self.fc6_2, self.fc6_3 = Dense(256, 4), Dense(256, 10), Dense(256, 2)

  def layers(self) -> list[nnx.Module]:
    """The layers with weights, in the order of the Keras model's ``get_weights()``."""
    return [
      self.conv1, self.prelu1, self.conv2, self.prelu2, self.conv3, self.prelu3, self.conv4, self.prelu4,
      self.fc5, self.prelu5, self.fc6_1, self.fc6_2, self.fc6_3,
    ]  # fmt: skip

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    x = max_pool(self.prelu1(self.conv1(x)), 3, 2, "SAME")
    x = max_pool(self.prelu2(self.conv2(x)), 3, 2, "VALID")
    x = max_pool(self.prelu3(self.conv3(x)), 2, 2, "SAME")
    x = self.prelu5(self.fc5(_flatten_wh(self.prelu4(self.conv4(x)))))
    return self.fc6_1(x), self.fc6_2(x), jax.nn.softmax(self.fc6_3(x), axis=-1)


# ------------------------------------------------------------------------------------------------
# Weights.


def weights_dir() -> str:
  """The ``mtcnn`` package's weight folder, found without importing the package (its ``__init__`` loads
  TensorFlow)."""
  spec = importlib.util.find_spec("mtcnn")
  if spec is None or not spec.submodule_search_locations:
    raise optional.MissingDependencyError("mtcnn", ModuleNotFoundError("No module named 'mtcnn'"))
  return os.path.join(list(spec.submodule_search_locations)[0], "assets", "weights")


def read_weights(name: str, folder: str | None = None) -> list[np.ndarray]:
  """The arrays of ``<name>.lz4`` ('pnet', 'rnet', 'onet'): Keras ``get_weights()`` order, float32."""
  joblib = optional.require("joblib")
  path = os.path.join(folder or weights_dir(), f"{name}.lz4")
  if not os.path.exists(path):
    raise FileNotFoundError(f"MTCNN weights not found: {path} (pip install mtcnn, which ships them)")
  return [np.asarray(a, np.float32) for a in joblib.load(path)]


def set_weights(net: PNet | RNet | ONet, arrays: Sequence[np.ndarray]) -> None:
  """Copies Keras-ordered arrays into ``net`` (conv kernels HWIO and dense kernels [in, out], as Keras stores them;
  PReLU alphas ``[1, 1, C]`` or ``[C]``), checking every shape."""
  targets = []
  for layer in net.layers():
    targets += [layer.alpha] if isinstance(layer, PReLU) else [layer.kernel, layer.bias]
  if len(targets) != len(arrays):
    raise ValueError(f"{type(net).__name__}: {len(arrays)} weight arrays, {len(targets)} expected")
  for i, (p, a) in enumerate(zip(targets, arrays)):
    a = np.asarray(a, np.float32).reshape(p.shape) if a.size == p.size else a
    if a.shape != p.shape:
      raise ValueError(f"{type(net).__name__}: weight {i} has shape {a.shape}, {p.shape} expected")
    p[...] = jnp.asarray(a)


def load(name: str, folder: str | None = None) -> PNet | RNet | ONet:
  """PNet, RNet or ONet (``name`` 'pnet', 'rnet', 'onet') with the ``mtcnn`` package's weights."""
  net = {"pnet": PNet, "rnet": RNet, "onet": ONet}[name]()
  set_weights(net, read_weights(name, folder))
  return net


# ------------------------------------------------------------------------------------------------
# The image pyramid, laid out on one canvas.


def pyramid(
  height: int, width: int, min_face_size: float, scale_factor: float = SCALE_FACTOR
) -> tuple[tuple[float, int, int], ...]:
  """Levels ``(scale, h, w)`` of the image pyramid: ``(12 / min_face_size) * scale_factor**k``; the count of levels
  is the package's (from the shorter side: ``round(log(side / 12) / log(1 / scale_factor) - 1)``), the sides are
  truncated, and levels too small for PNet (< 11 px) are left out (the package fails on the whole batch there)."""
  side = min(height, width)
  count = round(-(np.log(side / PNET_WINDOW) / np.log(scale_factor) + 1))
  scales = (PNET_WINDOW / min_face_size) * scale_factor ** np.arange(max(count, 0))
  levels = []
  for s in scales:
    h, w = (np.asarray([height, width]) * s).astype(int)
    if min(h, w) >= MIN_LEVEL:
      levels.append((float(s), int(h), int(w)))
  return tuple(levels)


def _round_up(n: int, m: int) -> int:
  return -(-int(n) // m) * m


def pack(sizes: Sequence[tuple[int, int]], multiple: int = 64) -> tuple[list[tuple[int, int]], tuple[int, int]]:
  """Origins ``(y, x)`` of images of ``sizes`` (largest first) on one canvas, and its shape (rounded up to
  ``multiple``): columns as tall as the first image (rows as wide, for a wide one), every origin even (PNet's
  stride-2 grid of each image then falls on the canvas's)."""
  tall = sizes[0][0] >= sizes[0][1]
  sz = [(h, w) if tall else (w, h) for h, w in sizes]
  even = lambda v: v + (v & 1)  # noqa: E731
  height, origins, cx, cy, col = even(sz[0][0]), [], 0, 0, 0
  for h, w in sz:
    if cy > 0 and cy + h > height:
      cx, cy, col = cx + even(col), 0, 0
    origins.append((cy, cx))
    cy, col = cy + even(h), max(col, w)
  shape = (_round_up(height, multiple), _round_up(cx + col, multiple))
  if not tall:
    origins, shape = [(x, y) for y, x in origins], shape[::-1]
  return origins, shape


def _area_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.float32]:
  """TensorFlow's ``ResizeArea`` along one axis, as parts: for each output index ``(lo, hi, i0, i1)`` (``int32
  [n_out, 4]``: input cells ``lo .. hi - 1`` count fully, cell ``i0`` by ``w0`` and ``i1`` by ``w1``), the weights
  ``float32 [n_out, 2]`` and the scale ``n_in / n_out``; the fractions computed in float32 as TensorFlow does."""
  s = np.float32(n_in) / np.float32(n_out)
  o = np.arange(n_out)
  a, b = o.astype(np.float32) * s, (o + 1).astype(np.float32) * s
  start, end = np.floor(a).astype(np.int64), np.ceil(b).astype(np.int64)
  s1 = (start + 1).astype(np.float32)
  w_first = np.where(start < a, np.where(s1 > b, s, s1 - a), np.where(s1 > b, b - start.astype(np.float32), 1))
  last = end - 1
  w_last = np.where(last > start, np.where(end.astype(np.float32) > b, b - last.astype(np.float32), 1), 0)
  lo = start + 1
  hi = np.maximum(last, lo)
  clamp = lambda i: np.clip(i, 0, n_in - 1)  # noqa: E731  (TensorFlow's Bound)
  parts = np.stack([lo, hi, clamp(start), clamp(last)], axis=1).astype(np.int32)
  return parts, np.stack([w_first, w_last], axis=1).astype(np.float32), np.float32(s)


def _weight_sum(parts: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """Sum of the weights of each output index of :func:`_area_axis` (float64)."""
  return (parts[:, 1] - parts[:, 0]).astype(np.float64) + weights.astype(np.float64).sum(axis=1)


class Plan:
  """The detection layout of one image size: the pyramid's levels, where each sits on PNet's canvas, and the maps
  (numpy) that build the canvas from an image and read PNet's cells back as windows of the levels.

  Canvas pixel maps (``[Hc, Wc]``): the level's input cells along y and x (:func:`_area_axis`) and the level's
  ``1 / (scale_y * scale_x)`` (0 off the levels). PNet maps: ``inside`` (first-convolution outputs on a level),
  and per output cell the level's scale (0 off the levels) and the cell's window corner in level px.
  """

  def __init__(self, height: int, width: int, min_face_size: float, scale_factor: float = SCALE_FACTOR):
    self.height, self.width = int(height), int(width)
    self.levels = pyramid(height, width, min_face_size, scale_factor)
    if not self.levels:
      return
    self.origins, (hc, wc) = pack([(h, w) for _, h, w in self.levels])
    self.canvas = (hc, wc)
    rows, cols = np.zeros((hc, wc, 4), np.int32), np.zeros((hc, wc, 4), np.int32)
    row_w, col_w = np.zeros((hc, wc, 2), np.float32), np.zeros((hc, wc, 2), np.float32)
    norm, offset = np.zeros((hc, wc), np.float32), np.zeros((hc, wc), np.float32)
    inside = np.zeros((hc - 2, wc - 2), bool)
    gh, gw = -(-(hc - 2) // 2) - 4, -(-(wc - 2) // 2) - 4
    cell_scale, cell_x, cell_y = (np.zeros((gh, gw), np.float32) for _ in range(3))
    for (scale, h, w), (oy, ox) in zip(self.levels, self.origins):
      py, wy, sy = _area_axis(self.height, h)
      px, wx, sx = _area_axis(self.width, w)
      rows[oy : oy + h, ox : ox + w] = py[:, None]
      row_w[oy : oy + h, ox : ox + w] = wy[:, None]
      cols[oy : oy + h, ox : ox + w] = px[None, :]
      col_w[oy : oy + h, ox : ox + w] = wx[None, :]
      norm[oy : oy + h, ox : ox + w] = np.float32(1.0 / (sy * sx))
      # TensorFlow normalises before resizing; its float32 fractions sum to the scale only within ~1e-5, so the
      # 127.5 it subtracts is weighted by the same sums.
      wsum = np.outer(_weight_sum(py, wy), _weight_sum(px, wx))
      offset[oy : oy + h, ox : ox + w] = 127.5 * wsum * np.float32(1.0 / (sy * sx))
      inside[oy : oy + h - 2, ox : ox + w - 2] = True
      lh, lw = -(-(h - 2) // 2) - 4, -(-(w - 2) // 2) - 4
      cy, cx = oy // 2, ox // 2
      cell_scale[cy : cy + lh, cx : cx + lw] = scale
      cell_y[cy : cy + lh, cx : cx + lw] = np.arange(lh, dtype=np.float32)[:, None] * 2 + 1
      cell_x[cy : cy + lh, cx : cx + lw] = np.arange(lw, dtype=np.float32)[None, :] * 2 + 1
    self.maps = dict(
      rows=rows, cols=cols, row_w=row_w, col_w=col_w, norm=norm, offset=offset, inside=inside,
      cell_scale=cell_scale, cell_y=cell_y, cell_x=cell_x,
    )  # fmt: skip

  def canvas_of(self, images: np.ndarray) -> np.ndarray:
    """The normalised canvas of uint8 images ``[B, H, W, 3]`` (numpy; for tests)."""
    m = {k: jnp.asarray(v) for k, v in self.maps.items()}
    return np.asarray(jax.jit(build_canvas)(jnp.asarray(images), m))

  def level_of(self, canvas: np.ndarray, k: int) -> np.ndarray:
    """Level ``k`` ``[B, h, w, C]`` cut from a canvas."""
    (_, h, w), (oy, ox) = self.levels[k], self.origins[k]
    return canvas[:, oy : oy + h, ox : ox + w]


def build_canvas(images: jax.Array, maps: dict[str, jax.Array]) -> jax.Array:
  """Every pyramid level of uint8 ``images`` ``[B, H, W, C]`` (any zero padding beyond the real image allowed),
  area-resized and normalised, on one canvas ``[B, Hc, Wc, C]`` (0 off the levels).

  Area sums come from integer prefix sums (exact; int32 arithmetic wraps, but every box sum fits) plus the
  fractional edge cells; the fractions multiply small integers, so the result is TensorFlow's to float32 rounding.
  """
  v = images.astype(jnp.int32)
  pad = lambda a, axis: jnp.concatenate([jnp.zeros_like(jnp.take(a, jnp.array([0]), axis=axis)), a], axis=axis)  # noqa: E731
  col_cum = pad(jnp.cumsum(v, axis=1), 1)  # [B, H + 1, W, C]: sum of rows < i
  row_cum = pad(jnp.cumsum(v, axis=2), 2)  # [B, H, W + 1, C]: sum of columns < j
  sat = pad(jnp.cumsum(col_cum, axis=2), 2)  # [B, H + 1, W + 1, C]
  r, c = maps["rows"], maps["cols"]
  rlo, rhi, r0, r1 = (r[..., k] for k in range(4))
  clo, chi, c0, c1 = (c[..., k] for k in range(4))
  g = lambda a, y, x: a[:, y, x].astype(jnp.float32)  # noqa: E731  [B, Hc, Wc, C]
  wr = [maps["row_w"][None, :, :, k, None] for k in range(2)]  # [1, Hc, Wc, 1]
  wc = [maps["col_w"][None, :, :, k, None] for k in range(2)]
  total = (sat[:, rhi, chi] - sat[:, rlo, chi] - sat[:, rhi, clo] + sat[:, rlo, clo]).astype(jnp.float32)
  for k, cc in enumerate((c0, c1)):  # partial columns over the full rows
    total = total + wc[k] * (col_cum[:, rhi, cc] - col_cum[:, rlo, cc]).astype(jnp.float32)
  for k, rr in enumerate((r0, r1)):  # partial rows: their full columns and partial corners
    part = (row_cum[:, rr, chi] - row_cum[:, rr, clo]).astype(jnp.float32)
    part = part + wc[0] * g(v, rr, c0) + wc[1] * g(v, rr, c1)
    total = total + wr[k] * part
  norm, offset = maps["norm"][None, ..., None], maps["offset"][None, ..., None]
  return jnp.where(norm > 0, (total * norm - offset) / 128.0, 0.0)


# ------------------------------------------------------------------------------------------------
# Crops and boxes.


def sample_patches(
  images: jax.Array,
  y0: jax.Array,
  x0: jax.Array,
  step_y: jax.Array,
  step_x: jax.Array,
  size: int,
  height: jax.Array | int | None = None,
  width: jax.Array | int | None = None,
) -> jax.Array:
  """Bilinear patches ``[B, N, size, size, C]``: patch pixel ``(i, j)`` of box ``n`` samples image ``b`` at index
  coordinates ``(y0 + i * step_y, x0 + j * step_x)`` (each ``[B, N]``); a pixel whose sample falls outside the image
  (``height`` x ``width``, default the array's; a zero-padded image may be larger) is 0 (TensorFlow's
  ``crop_and_resize``, with its float32 arithmetic)."""
  hmax, wmax = images.shape[1], images.shape[2]
  height = hmax if height is None else height
  width = wmax if width is None else width
  steps = jnp.arange(size, dtype=jnp.float32)
  in_y = y0[..., None] + steps * step_y[..., None]  # [B, N, S]
  in_x = x0[..., None] + steps * step_x[..., None]

  def taps(v, n, nmax):
    lo = jnp.floor(v)
    inside = (v >= 0) & (v <= n - 1)
    return (
      jnp.clip(lo, 0, nmax - 1).astype(jnp.int32),
      jnp.clip(jnp.ceil(v), 0, nmax - 1).astype(jnp.int32),
      v - lo,
      inside,
    )

  top, bottom, ly, in_y_ok = taps(in_y, height, hmax)
  left, right, lx, in_x_ok = taps(in_x, width, wmax)

  def one(img, top, bottom, ly, left, right, lx):  # one image: [N, S] each
    g = lambda yy, xx: img[yy[:, :, None], xx[:, None, :]]  # noqa: E731  [N, S, S, C]
    tl, tr, bl, br = g(top, left), g(top, right), g(bottom, left), g(bottom, right)
    lx, ly = lx[:, None, :, None], ly[:, :, None, None]
    t = tl + (tr - tl) * lx
    b = bl + (br - bl) * lx
    return t + (b - t) * ly

  out = jax.vmap(one)(images, top, bottom, ly, left, right, lx)
  ok = in_y_ok[..., :, None] & in_x_ok[..., None, :]
  return jnp.where(ok[..., None], out, 0.0)


def crop_and_resize(
  images: jax.Array, boxes: jax.Array, size: int, height: jax.Array | int, width: jax.Array | int
) -> jax.Array:
  """Patches ``[B, N, size, size, C]`` of boxes ``[B, N, 4]`` (x0, y0, x1, y1 in index px) of images ``height`` x
  ``width`` (zero-padded beyond), sampled as the package does: boxes divided by the image side, then
  ``tf.image.crop_and_resize`` (which maps them back by ``side - 1``)."""
  h = jnp.asarray(height, jnp.float32)
  w = jnp.asarray(width, jnp.float32)
  ny0, nx0, ny1, nx1 = boxes[..., 1] / h, boxes[..., 0] / w, boxes[..., 3] / h, boxes[..., 2] / w
  step_y = (ny1 - ny0) * (h - 1) / (size - 1)
  step_x = (nx1 - nx0) * (w - 1) / (size - 1)
  return sample_patches(images, ny0 * (h - 1), nx0 * (w - 1), step_y, step_x, size, h, w)


def normalize(images: jax.Array) -> jax.Array:
  """MTCNN's input scaling: uint8 -> (x - 127.5) / 128, float32."""
  return (images.astype(jnp.float32) - 127.5) / 128.0


def overlap(boxes: jax.Array, method: str = "union") -> jax.Array:
  """Pairwise overlap ``[..., N, N]`` of boxes ``[..., N, 4]``: intersection over union, or over the smaller box
  (``method='min'``); areas without MTCNN's +1 (as the package's NMS)."""
  x0, y0, x1, y1 = (boxes[..., k] for k in range(4))
  area = (x1 - x0) * (y1 - y0)
  lo = lambda a: jnp.maximum(a[..., :, None], a[..., None, :])  # noqa: E731
  hi = lambda a: jnp.minimum(a[..., :, None], a[..., None, :])  # noqa: E731
  inter = jnp.maximum(0.0, hi(x1) - lo(x0)) * jnp.maximum(0.0, hi(y1) - lo(y0))
  if method == "union":
    return inter / (area[..., :, None] + area[..., None, :] - inter)
  return inter / jnp.minimum(area[..., :, None], area[..., None, :])


def nms(
  boxes: jax.Array, valid: jax.Array, threshold: float, method: str = "union", groups: jax.Array | None = None
) -> jax.Array:
  """Which of the boxes ``[B, N, 4]`` (sorted best first; ``valid`` ``[B, N]``) survive the package's NMS: box ``j``
  is dropped when a valid box before it (of the same group, if ``groups`` ``[B, N]`` is given) overlaps it by more
  than ``threshold``, whether or not that box was dropped itself."""
  n = boxes.shape[-2]
  before = jnp.triu(jnp.ones((n, n), bool), k=1)  # [i, j]: i comes before j
  hits = (overlap(boxes, method) > threshold) & before & valid[..., :, None]
  if groups is not None:
    hits = hits & (groups[..., :, None] == groups[..., None, :])
  return valid & ~jnp.any(hits, axis=-2)


def best_first(scores: jax.Array, valid: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Indices ``[B, k]`` of the ``k`` best valid scores (best first, then the invalid ones) and their validity."""
  vals, idx = lax.top_k(jnp.where(valid, scores, -jnp.inf), k)
  return idx, vals > -jnp.inf


def take(x: jax.Array, idx: jax.Array) -> jax.Array:
  """``x[b, idx[b]]`` for ``x`` ``[B, N, ...]`` and ``idx`` ``[B, K]``."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def square(boxes: jax.Array) -> jax.Array:
  """Boxes grown to squares of their longer side around the same centre (no +1, as the package)."""
  w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
  side = jnp.maximum(w, h)
  x0, y0 = boxes[..., 0] + w * 0.5 - side * 0.5, boxes[..., 1] + h * 0.5 - side * 0.5
  return jnp.stack([x0, y0, x0 + side, y0 + side], axis=-1)


def calibrate(boxes: jax.Array, offsets: jax.Array) -> jax.Array:
  """Boxes moved by a network's regression, in units of the box size (MTCNN's inclusive ``x1 - x0 + 1``)."""
  w, h = boxes[..., 2] - boxes[..., 0] + 1, boxes[..., 3] - boxes[..., 1] + 1
  return boxes + offsets * jnp.stack([w, h, w, h], axis=-1)


# ------------------------------------------------------------------------------------------------
# The cascade's stages, jitted (networks passed split: graphdef static, state traced). Shapes are buckets: frames
# zero-padded to multiples of 64 px, batches and box counts to powers of two; the sizes that matter are data.


@functools.partial(jax.jit, static_argnames=("graphdef", "capacity"))
def _propose(graphdef, state, images, maps, threshold, *, capacity):
  """Canvas + PNet + NMS per level and across levels + squaring: boxes ``[B, K, 4]`` best first, their scores,
  validity, and counts ``[B, 2]`` (windows above the threshold, which must stay within ``capacity`` for the exact
  result; boxes kept)."""
  pnet = nnx.merge(graphdef, state)
  b = images.shape[0]
  reg, prob = pnet(build_canvas(images, maps), maps["inside"])
  scale = maps["cell_scale"].reshape(-1)
  score = prob[..., 1].reshape(b, -1)
  above = (score > threshold) & (scale > 0)
  idx, ok = best_first(score, above, min(capacity, score.shape[1]))
  r = take(reg.reshape(b, -1, 4), idx)
  s, gx, gy = scale[idx], maps["cell_x"].reshape(-1)[idx], maps["cell_y"].reshape(-1)[idx]
  # Cell (y, x) of a level is its window over level pixels 2x + 1 .. 2x + 12 (the package's convention: 11 px
  # wide), regressed in units of that width and mapped back to the image by the level's scale.
  side = PNET_WINDOW - 1
  x0, y0 = gx + r[..., 0] * side, gy + r[..., 1] * side
  x1, y1 = gx + side + r[..., 2] * side, gy + side + r[..., 3] * side
  boxes = jnp.stack([x0, y0, x1, y1], axis=-1) / jnp.where(ok, s, 1.0)[..., None]
  scores = take(score, idx)
  keep = nms(boxes, ok, NMS_PNET_LEVEL, groups=s)
  idx, ok = best_first(scores, keep, keep.shape[1])
  boxes, scores = take(boxes, idx), take(scores, idx)
  keep = nms(boxes, ok, NMS_PNET)
  idx, ok = best_first(scores, keep, keep.shape[1])
  counts = jnp.stack([above.sum(axis=1), keep.sum(axis=1)], axis=1)
  return square(take(boxes, idx)), take(scores, idx), ok, counts


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _refine(graphdef, state, images, hw, boxes, valid, threshold):
  """RNet on the boxes' 24 px crops: calibrated boxes (squared), scores, validity (best first) and the count."""
  rnet = nnx.merge(graphdef, state)
  b, n = boxes.shape[:2]
  patches = crop_and_resize(normalize(images), boxes, RNET_SIZE, hw[0], hw[1])
  reg, prob = in_chunks(rnet, patches.reshape(b * n, RNET_SIZE, RNET_SIZE, 3))
  score = prob[:, 1].reshape(b, n)
  boxes = calibrate(boxes, reg.reshape(b, n, 4))
  idx, ok = best_first(score, valid & (score > threshold), n)
  boxes, score = take(boxes, idx), take(score, idx)
  idx, ok = best_first(score, nms(boxes, ok, NMS_RNET), n)
  return square(take(boxes, idx)), take(score, idx), ok, ok.sum(axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _output(graphdef, state, images, hw, boxes, valid, threshold):
  """ONet on the boxes' 48 px crops: calibrated boxes, scores, landmarks ``[B, N, 10]``, validity (best first)."""
  onet = nnx.merge(graphdef, state)
  b, n = boxes.shape[:2]
  patches = crop_and_resize(normalize(images), boxes, ONET_SIZE, hw[0], hw[1])
  reg, marks, prob = in_chunks(onet, patches.reshape(b * n, ONET_SIZE, ONET_SIZE, 3))
  score = prob[:, 1].reshape(b, n)
  marks = marks.reshape(b, n, 10)
  w, h = boxes[..., 2:3] - boxes[..., 0:1] + 1, boxes[..., 3:4] - boxes[..., 1:2] + 1
  marks = jnp.concatenate([w * marks[..., :5] + boxes[..., 0:1] - 1, h * marks[..., 5:] + boxes[..., 1:2] - 1], -1)
  boxes = calibrate(boxes, reg.reshape(b, n, 4))
  idx, ok = best_first(score, valid & (score > threshold), n)
  boxes, score, marks = take(boxes, idx), take(score, idx), take(marks, idx)
  return boxes, score, marks, nms(boxes, ok, NMS_ONET, method="min")


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _onet_on(graphdef, state, image, hw, y0, x0, step):
  """ONet on patches of one image sampled from ``(y0, x0)`` by ``step`` px (the tracking refit)."""
  onet = nnx.merge(graphdef, state)
  x = normalize(image[None])
  patches = sample_patches(x, y0[None], x0[None], step[None], step[None], ONET_SIZE, hw[0], hw[1])[0]
  return in_chunks(onet, patches)


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk"))
def _onet_along(graphdef, state, frames, hw, squares, *, chunk):
  """The tracking refit along frames ``[T, H, W, 3]``: ONet on frame ``t`` at the squares of frame ``t - 1``'s
  refined boxes (frame 0 at ``squares`` ``[K, 4]``), one scan on the device. Per frame: the squares used, regression,
  landmarks (fractions of the square), face probability."""
  onet = nnx.merge(graphdef, state)

  def step(sq, frame):
    x0, y0, x1, y1 = sq[:, 0], sq[:, 1], sq[:, 2], sq[:, 3]
    step_ = (x1 - x0) / (ONET_SIZE - 1)
    x = normalize(frame[None])
    patches = sample_patches(x, y0[None], x0[None], step_[None], step_[None], ONET_SIZE, hw[0], hw[1])[0]
    reg, marks, prob = in_chunks(onet, patches, chunk)
    side = jnp.stack([x1 - x0 + 1, y1 - y0 + 1] * 2, axis=-1)
    box = sq + reg * side  # faces._refined's box, then faces._square of it (index px)
    new_side = jnp.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
    nx0 = (box[:, 0] + box[:, 2] - new_side) / 2
    ny0 = (box[:, 1] + box[:, 3] - new_side) / 2
    return jnp.stack([nx0, ny0, nx0 + new_side, ny0 + new_side], axis=-1), (sq, reg, marks, prob[:, 1])

  return lax.scan(step, squares, frames)[1]


def in_chunks(net: nnx.Module, patches: jax.Array, chunk: int = CHUNK) -> tuple[jax.Array, ...]:
  """``net`` on ``patches`` ``[N, S, S, 3]`` (``N`` a multiple of ``chunk``) in chunks of ``chunk``, one after the
  other: XLA's contractions change their summation order with the number of rows (2e-6 apart from 64 rows of a
  576-wide product on CPU), and a face must not move with the number of boxes or frames batched beside it."""
  chunks = patches.reshape(-1, chunk, *patches.shape[1:])
  out = lax.map(net, chunks)
  return tuple(o.reshape(-1, *o.shape[2:]) for o in out)


def _pow2(n: int, least: int = 1) -> int:
  """``n`` rounded up to a power of two (at least ``least``): few compiled shapes for any count."""
  return max(least, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def _first(a: jax.Array, k: int) -> jax.Array:
  """The first ``k`` entries along axis 1 (boxes best first), zero- / False-padded if there are fewer."""
  if a.shape[1] >= k:
    return a[:, :k]
  return jnp.pad(a, [(0, 0), (0, k - a.shape[1])] + [(0, 0)] * (a.ndim - 2))


def _pad_to(images: np.ndarray, batch: int, height: int, width: int) -> np.ndarray:
  b, h, w = images.shape[:3]
  if (b, h, w) == (batch, height, width):
    return images
  out = np.zeros((batch, height, width, images.shape[3]), images.dtype)
  out[:b, :h, :w] = images
  return out


class MTCNN:
  """Face detection with the three networks on batches of same-sized uint8 RGB frames (module docstring).

  ``detect(images, min_face_size=20)`` gives the package's numpy rows; ``refit(image, squares)`` runs only ONet on
  given square boxes (following a face from one frame to the next). Frames are zero-padded to multiples of
  ``PAD`` px and batches to powers of two, so that images of nearby sizes share compiled programs.
  """

  PAD = 64

  def __init__(self, folder: str | None = None, capacity: int = CAPACITY):
    self.pnet, self.rnet, self.onet = (load(n, folder) for n in ("pnet", "rnet", "onet"))
    self._nets = {name: nnx.split(net) for name, net in (("p", self.pnet), ("r", self.rnet), ("o", self.onet))}
    self._plans: dict[tuple, tuple[Plan, dict[str, jax.Array]]] = {}
    self.capacity: dict[tuple, int] = {}  # per plan, grown when a batch has more windows above the threshold
    self.default_capacity = int(capacity)

  def plan(self, height: int, width: int, min_face_size: float, scale_factor: float = SCALE_FACTOR):
    """The :class:`Plan` of an image size and its maps on the device (made once per size)."""
    key = (height, width, float(min_face_size), float(scale_factor))
    if key not in self._plans:
      plan = Plan(height, width, min_face_size, scale_factor)
      maps = {k: jnp.asarray(v) for k, v in plan.maps.items()} if plan.levels else {}
      if len(self._plans) > 64:  # a long run over photos of many sizes: keep the cache bounded
        self._plans.pop(next(iter(self._plans)))
      self._plans[key] = plan, maps
    return self._plans[key]

  def detect(
    self,
    images: np.ndarray | Sequence[np.ndarray],
    *,
    min_face_size: float = 20,
    scale_factor: float = SCALE_FACTOR,
    threshold_pnet: float = THRESHOLDS["threshold_pnet"],
    threshold_rnet: float = THRESHOLDS["threshold_rnet"],
    threshold_onet: float = THRESHOLDS["threshold_onet"],
  ) -> np.ndarray:
    """Rows ``[n, 16]``: image index, box (x0, y0, x1, y1; index px, clipped to the image), score, 5 landmark x,
    5 landmark y; per image best score first. ``images``: uint8 ``[B, H, W, 3]`` or a list of same-sized frames."""
    images = np.stack(images) if not isinstance(images, np.ndarray) else images
    if images.ndim == 3:
      images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f"MTCNN.detect: expected uint8 RGB images [B, H, W, 3], got {images.dtype} {images.shape}")
    b, h, w = images.shape[:3]
    empty = np.zeros((0, 16))
    plan, maps = self.plan(h, w, min_face_size, scale_factor)
    if not plan.levels or b == 0:
      return empty
    x = jnp.asarray(_pad_to(images, _pow2(b), _round_up(h, self.PAD), _round_up(w, self.PAD)))
    hw = jnp.asarray([h, w], jnp.float32)
    key = (h, w, float(min_face_size), float(scale_factor))
    cap = self.capacity.get(key, self.default_capacity)
    p_graph, p_state = self._nets["p"]
    while True:
      boxes, scores, ok, counts = _propose(p_graph, p_state, x, maps, jnp.float32(threshold_pnet), capacity=cap)
      counts = np.asarray(counts)[:b]
      if counts[:, 0].max() <= cap:
        break
      cap = _pow2(int(counts[:, 0].max()))  # more windows than the capacity: exact again at a larger one
      self.capacity[key] = cap
    n = int(counts[:, 1].max())
    if n == 0:
      return empty
    k = _pow2(n, RNET_BOXES)  # ~0.2 ms a box on a CPU; 8 vs 16 boxes on two keyframes would compile twice (2 s)
    boxes, scores, ok, count = _refine(
      *self._nets["r"], x, hw, _first(boxes, k), _first(ok, k), jnp.float32(threshold_rnet)
    )
    n = int(np.asarray(count)[:b].max())
    if n == 0:
      return empty
    k = _pow2(n, CHUNK)
    out = _output(*self._nets["o"], x, hw, _first(boxes, k), _first(ok, k), jnp.float32(threshold_onet))
    boxes, scores, marks, ok = (np.asarray(a)[:b] for a in out)
    bi, ni = np.nonzero(ok)
    rows = np.concatenate([bi[:, None], boxes[bi, ni], scores[bi, ni, None], marks[bi, ni]], axis=1, dtype=np.float64)
    rows[:, [1, 3]] = np.clip(rows[:, [1, 3]], 0, w - 1)
    rows[:, [2, 4]] = np.clip(rows[:, [2, 4]], 0, h - 1)
    return rows

  def refit(self, image: np.ndarray, squares: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONet on square boxes ``[n, 4]`` (x0, y0, x1, y1 index px) of one uint8 RGB image, each sampled bilinearly
    at 48 x 48 points from its corner to the opposite one (0 outside the image): regression ``[n, 4]``, landmarks
    ``[n, 10]`` as fractions of the box, face probability ``[n]``."""
    squares = np.asarray(squares, np.float64).reshape(-1, 4)
    n = len(squares)
    if n == 0:
      return np.zeros((0, 4)), np.zeros((0, 10)), np.zeros((0,))
    h, w = image.shape[:2]
    k = _pow2(n, CHUNK)
    pad = np.concatenate([squares, np.repeat(squares[-1:], k - n, axis=0)])
    step = (pad[:, 2] - pad[:, 0]) / (ONET_SIZE - 1)
    img = _pad_to(np.asarray(image, np.uint8)[None], 1, _round_up(h, self.PAD), _round_up(w, self.PAD))[0]
    reg, marks, prob = _onet_on(
      *self._nets["o"],
      jnp.asarray(img),
      jnp.asarray([h, w], jnp.float32),
      jnp.asarray(pad[:, 1], jnp.float32),
      jnp.asarray(pad[:, 0], jnp.float32),
      jnp.asarray(step, jnp.float32),
    )
    reg, marks, prob = (np.asarray(a, np.float64) for a in (reg, marks, prob))
    return reg[:n], marks[:n], prob[:n, 1]

  def refit_along(
    self, frames: Sequence[np.ndarray], squares: np.ndarray
  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:meth:`refit` along same-sized frames, each on the squares of the boxes refined on the frame before (the
    first on ``squares`` ``[n, 4]``), in one call on the device (a scan; frames and boxes padded to powers of two):
    squares used ``[T, n, 4]``, regression ``[T, n, 4]``, landmarks ``[T, n, 10]``, face probability ``[T, n]``."""
    squares = np.asarray(squares, np.float64).reshape(-1, 4)
    t, n = len(frames), len(squares)
    if n == 0 or t == 0:
      return np.zeros((t, n, 4)), np.zeros((t, n, 4)), np.zeros((t, n, 10)), np.zeros((t, n))
    h, w = frames[0].shape[:2]
    k, tp = _pow2(n), _pow2(t)  # one face: ONet on 1 crop per frame, not CHUNK (1e-4 px from refit's 8)
    pad = np.concatenate([squares, np.repeat(squares[-1:], k - n, axis=0)])
    x = _pad_to(np.stack(frames).astype(np.uint8, copy=False), tp, _round_up(h, self.PAD), _round_up(w, self.PAD))
    out = _onet_along(
      *self._nets["o"],
      jnp.asarray(x),
      jnp.asarray([h, w], jnp.float32),
      jnp.asarray(pad, jnp.float32),
      chunk=min(k, CHUNK),
    )
    return tuple(np.asarray(a, np.float64)[:t, :n] for a in out)
