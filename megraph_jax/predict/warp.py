"""The similarity warp of face alignment on the device: frames + per-face affine maps -> aligned crops, batched.

:func:`warp_faces` is one jitted op over a batch of same-sized frames and the faces found in them; every aligned crop
in the project comes from it (prediction's pipeline in batches, :func:`megraph_jax.predict.faces.warp` one face at a
time, hence ``data_pipelines/align.py``). It reproduces what the project's alignment was first written with, PIL's
``Image.reduce`` + ``Image.transform(AFFINE, BICUBIC)``, rule for rule:

  * output pixel ``(x, y)`` samples the source at ``inverse @ (x + 0.5, y + 0.5, 1)``: continuous pixels, the centre
    of pixel ``i`` at ``i + 0.5`` (:mod:`megraph_jax.predict.faces`' convention);
  * a sample point outside ``[0, W) x [0, H)`` is black; inside, its 4 x 4 taps are clamped to the image's edge;
  * bicubic is PIL's cubic convolution with ``a = -1``, along rows, then down the column (equal taps give their
    value exactly, as PIL's), the result clamped to ``[0, 255]`` and truncated;
  * a crop that shrinks the source below half size (``factor > 1``, :func:`sampling`) samples the source box-reduced
    by ``factor``: each tap the mean of its ``factor x factor`` block (fewer pixels in the partial blocks at the
    right and bottom edges), rounded in PIL's fixed point.

The arithmetic is float32 (PIL's is double; the crop's centre is placed in integer + fraction so that precision
does not fall with the frame's size), so a value a hair from an integer may truncate one grey level apart: against
PIL on real photos at most 0.011% of the values differ, by 1, and a model's AU probabilities on the crops by 4e-6
(``tests/test_warp.py``). Shapes are static per (frames, faces, frame size, crop size, factor); :func:`align_faces`
pads the counts, so a video compiles once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _weights(d: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """PIL's bicubic (cubic convolution, a = -1) at fraction ``d``: the weights of the taps at -1, 1 and 2 (that at 0
  is 1 minus their sum)."""
  d2 = d * d
  d3 = d2 * d
  return -d + 2 * d2 - d3, d + d2 - d3, d3 - d2


def _cubic(v: list[jax.Array], w: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
  """The bicubic of taps ``v`` at -1, 0, 1, 2 with :func:`_weights` ``w``, as the tap at 0 plus weighted differences:
  equal taps give their value exactly, as PIL's Horner form in double does (a plain weighted sum in float32 lands a
  hair below it, and truncation then takes a grey level off flat regions)."""
  return v[1] + w[0] * (v[0] - v[1]) + w[1] * (v[2] - v[1]) + w[2] * (v[3] - v[1])


def box_reduce(frames: jax.Array, factor: int) -> jax.Array:
  """``frames`` ``[B, H, W, 3]`` uint8 box-reduced by ``factor`` as PIL's ``Image.reduce``: ``[B, ceil(H / factor),
  ceil(W / factor), 3]`` uint8, each pixel the mean of its ``factor x factor`` block (the blocks at the right and
  bottom edges hold fewer pixels), rounded in PIL's fixed point: ``((sum + n // 2) * m) >> 24`` with ``m`` its
  float32 ``2**32 / (256 n)``."""
  b, h, w, _ = frames.shape
  hr, wr = -(-h // factor), -(-w // factor)
  x = jnp.pad(frames, ((0, 0), (0, hr * factor - h), (0, wr * factor - w), (0, 0))).astype(jnp.uint32)
  total = x.reshape(b, hr, factor, wr, factor, 3).sum(axis=(2, 4), dtype=jnp.uint32)  # [B, Hr, Wr, 3]
  rows = jnp.minimum(factor, h - factor * jnp.arange(hr))  # pixels per block
  cols = jnp.minimum(factor, w - factor * jnp.arange(wr))
  n = (rows[:, None] * cols[None, :]).astype(jnp.uint32)[None, :, :, None]  # [1, Hr, Wr, 1]
  multiplier = (jnp.float32(2.0**32) / (256.0 * n.astype(jnp.float32))).astype(jnp.uint32)  # PIL's, in float32
  return (((total + n // 2) * multiplier) >> 24).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("size", "factor"))
def warp_faces(
  frames: jax.Array, which: jax.Array, centre: jax.Array, linear: jax.Array, *, size: int, factor: int = 1
) -> jax.Array:
  """Aligned crops ``[F, size, size, 3]`` uint8 of faces in ``frames`` ``[B, H, W, 3]`` uint8.

  Face ``f`` is sampled from frame ``which[f]`` ``[F]`` box-reduced by ``factor`` (:func:`box_reduce`; 1: as it is)
  through the inverse map (crop px -> px of that frame, continuous pixels) as :func:`split` gives it: ``centre[f]``
  ``[F, 2, 2]`` int32, where the crop's centre lands (x, y) as (integer, fraction in [0, 1) bit-cast from float32),
  so that its precision does not depend on the frame's size, and ``linear[f]`` ``[F, 2, 2]`` float32."""
  if factor > 1:
    frames = box_reduce(frames, factor)  # [B, Hr, Wr, 3]
  _, h, w, _ = frames.shape
  c = jnp.arange(size, dtype=jnp.float32) + (0.5 - size / 2)  # crop px from the centre
  a = linear[:, :, :, None, None]  # [F, 2, 2, 1, 1]
  whole = centre[:, :, 0, None, None, None]  # [F, 2, 1, 1, 1]
  part = lax.bitcast_convert_type(centre[:, :, 1], jnp.float32)[:, :, None, None]  # [F, 2, 1, 1]
  sx = (part[:, 0] + (a[:, 0, 0] * c[None, :] + a[:, 0, 1] * c[:, None]))[..., None]  # [F, S, S, 1]: row y, col x
  sy = (part[:, 1] + (a[:, 1, 0] * c[None, :] + a[:, 1, 1] * c[:, None]))[..., None]
  fx, fy = jnp.floor(sx), jnp.floor(sy)
  dx, dy = sx - fx, sy - fy
  # A sample point p = i + d + 0.5 (i integer, d in [0, 1)): PIL's taps are rows/columns i - 1 .. i + 2.
  ix, iy = whole[:, 0] + fx.astype(jnp.int32), whole[:, 1] + fy.astype(jnp.int32)
  inside = ((ix >= 0) | ((ix == -1) & (dx >= 0.5))) & ((ix < w - 1) | ((ix == w - 1) & (dx < 0.5)))  # 0 <= p < n
  inside &= ((iy >= 0) | ((iy == -1) & (dy >= 0.5))) & ((iy < h - 1) | ((iy == h - 1) & (dy < 0.5)))
  # Taps clamped to the frame's edge (PIL's) as the frame with its edge repeated 2 px around: for a point inside,
  # rows iy - 1 .. iy + 2 are padded rows iy + 1 .. iy + 4 (iy >= -1), so each tap is a fixed offset from the
  # first (one index per crop pixel instead of 16 clamped ones); a point outside is black whatever it reads.
  hp, wp = h + 4, w + 4
  flat = jnp.pad(frames, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge").reshape(-1)  # [B * Hp * Wp * 3]
  first = (which[:, None, None, None] * hp + jnp.clip(iy + 1, 0, hp - 4)) * wp + jnp.clip(ix + 1, 0, wp - 4)
  index = first * 3 + jnp.arange(3)  # [F, S, S, 3]: the first tap's channels

  def tap(i: int, j: int) -> jax.Array:  # [F, S, S, 3]: the tap at row i, column j of the 4 x 4
    return flat[index + (i * wp + j) * 3].astype(jnp.float32)

  wx = _weights(dx)
  rows = [_cubic([tap(i, j) for j in range(4)], wx) for i in range(4)]
  v = _cubic(rows, _weights(dy))
  v = jnp.where(v <= 0, 0.0, jnp.where(v >= 255, 255.0, v))  # PIL: clamped, then truncated
  return jnp.where(inside, v.astype(jnp.uint8), jnp.uint8(0))


def padded_count(n: int, least: int = 1) -> int:
  """``n`` rounded up to a power of two, at least ``least``: the padded batch sizes that bound recompiles."""
  return max(int(least), 1 << max(0, int(n) - 1).bit_length())


def _invert(matrix: np.ndarray) -> np.ndarray:
  """Inverse of an affine ``[2, 3]``."""
  lin = np.linalg.inv(matrix[:, :2])
  return np.concatenate([lin, -(lin @ matrix[:, 2])[:, None]], axis=1)


def sampling(matrix: np.ndarray) -> tuple[np.ndarray, int]:
  """How a crop samples its source: (inverse affine ``[2, 3]``, crop px -> px of the source box-reduced by
  ``factor``; ``factor``). A crop that shrinks the source below half size samples it box-reduced by the integer
  ``factor`` (so that strong shrinking does not alias), else ``factor`` is 1."""
  m = np.asarray(matrix, np.float64)
  scale = np.sqrt(abs(np.linalg.det(m[:, :2])))
  factor = int(1.0 / scale) if scale < 0.5 else 1
  if factor > 1:
    m = m.copy()
    m[:, :2] *= factor
  return _invert(m), factor


def split(inverse: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """``inverse`` ``[2, 3]`` (crop px -> source px) as :func:`warp_faces` takes it: ``[2, 2]`` int32, where the centre
  of a ``size`` crop lands minus PIL's half pixel, (integer, fraction in [0, 1) as float32 bits) for x and y; and
  the linear part ``[2, 2]`` float32."""
  point = inverse[:, :2] @ [size / 2, size / 2] + inverse[:, 2] - 0.5  # float64
  whole = np.floor(point)
  part = np.minimum((point - whole).astype(np.float32), np.float32(1 - 2**-24))  # below 1 after rounding
  centre = np.stack([whole.astype(np.int32), part.view(np.int32)], axis=1)
  return centre, inverse[:, :2].astype(np.float32)


def align_faces(
  frames: Sequence[np.ndarray],
  which: Sequence[int],
  matrices: Sequence[np.ndarray],
  size: int,
  *,
  frames_to: int = 1,
  faces_to: int = 1,
) -> np.ndarray:
  """Crops ``[F, size, size, 3]`` uint8 of ``F = len(which)`` faces: face ``f`` warped from ``frames[which[f]]``
  (RGB uint8, all of one size) by ``matrices[f]`` ``[2, 3]`` (source -> crop px).

  :func:`warp_faces` runs on exactly ``faces_to`` faces at a time (the last call padded) of one reduction factor
  and on the frames padded to ``frames_to`` (or the next power of two above), so a video whose batches hold up to
  ``frames_to`` frames compiles it once per factor its faces need (1 unless a face is shrunk below half size)."""
  h, w = frames[0].shape[:2]
  if any(fr.shape != (h, w, 3) for fr in frames):
    raise ValueError("align_faces: frames of different sizes or not RGB; batch RGB frames of one size")
  n, step = len(which), max(1, int(faces_to))
  centre = np.zeros((n, 2, 2), np.int32)
  linear = np.zeros((n, 2, 2), np.float32)
  factor = np.ones(n, np.int32)
  for f, m in enumerate(matrices):
    inverse, factor[f] = sampling(m)
    centre[f], linear[f] = split(inverse, size)
  blank = [np.zeros_like(frames[0])] * (max(int(frames_to), padded_count(len(frames))) - len(frames))
  batch = jnp.asarray(np.stack([*frames, *blank]))  # [B, H, W, 3]
  which = np.asarray(which, np.int32)
  crops = np.zeros((n, size, size, 3), np.uint8)  # [F, S, S, 3]
  for f in np.unique(factor):  # faces by reduction factor, in calls of exactly `step` faces
    todo = np.flatnonzero(factor == f)
    for k in range(0, len(todo), step):
      part = todo[k : k + step]
      args = [_padded(a[part], step) for a in (which, centre, linear)]
      crops[part] = np.asarray(warp_faces(batch, *args, size=int(size), factor=int(f)))[: len(part)]
  return crops


def _padded(a: np.ndarray, n: int) -> np.ndarray:
  """``a`` padded with zeros to ``n`` rows (padding faces: frame 0, the crop's centre on its pixel (0, 0))."""
  return np.concatenate([a, np.zeros((n - len(a), *a.shape[1:]), a.dtype)])
