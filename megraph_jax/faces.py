"""Faces: MTCNN detection, five-landmark similarity alignment onto a fixed template, and face tracks in videos.

Landmark order everywhere: left eye, right eye, nose tip, left mouth corner, right mouth corner, where
"left" is the image's left. Coordinates are continuous pixels (the centre of pixel ``i`` is ``i + 0.5``).
The template keeps the framing of the official ME-GraphAU 256 px crops (eyes at 29 % of the height), so
the eval transform's resize to 256 and 224 crop keep brows, eyes, nose and mouth. Used by prediction
(:func:`mtcnn_aligner`) and by the offline aligner ``data_pipelines/align.py``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

ALIGN_SIZE = 256  # px side of aligned crops, as the official ME-GraphAU crops (then resize + centre crop)

LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# Five-point template in fractions of the output side: the framing of the official 256 px crops
# (MTCNN on data/BP4D/img/F001/T1/2440.jpg and data/DISFA/img/SN001/0.png: eye line at 0.29, eyes
# 0.34 apart, nose 0.58 and mouth 1.06 interocular distances below the eyes, mouth 0.83 wide), symmetric.
TEMPLATE = np.array([[0.330, 0.290], [0.670, 0.290], [0.500, 0.487], [0.359, 0.650], [0.641, 0.650]])
# Least-squares weights: eyes and nose are rigid; mouth corners move with AU12/15/20/25/26, so they
# count less and an expression barely moves the crop.
WEIGHTS = np.array([1.0, 1.0, 0.5, 0.25, 0.25])


class AlignError(ValueError):
  """A bad argument or an unusable input file (the message names it)."""


# ------------------------------------------------------------------------------------------------
# Geometry.


def template(size: int) -> np.ndarray:
  """Template landmarks ``[5, 2]`` in continuous pixels of a ``size`` x ``size`` crop."""
  return TEMPLATE * float(size)


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
  """Weighted least-squares similarity (Umeyama 1991) ``[2, 3]``: ``dst ~= A[:, :2] @ src + A[:, 2]``."""
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  w = np.ones(src.shape[0]) if weights is None else np.asarray(weights, np.float64)
  w = w / w.sum()
  mu_s, mu_d = w @ src, w @ dst
  s0, d0 = src - mu_s, dst - mu_d
  var_s = w @ np.sum(s0**2, axis=1)
  if var_s <= 1e-12:
    raise AlignError("umeyama: the source points coincide; cannot fit a similarity")
  cov = (d0 * w[:, None]).T @ s0  # [2, 2]
  u, sig, vt = np.linalg.svd(cov)
  e = np.eye(2)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    e[1, 1] = -1.0  # No reflections.
  rot = u @ e @ vt
  scale = np.trace(np.diag(sig) @ e) / var_s
  out = np.zeros((2, 3))
  out[:, :2] = scale * rot
  out[:, 2] = mu_d - out[:, :2] @ mu_s
  return out


def apply(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
  """Applies an affine ``[2, 3]`` to points ``[K, 2]``."""
  return np.asarray(pts, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def _invert(matrix: np.ndarray) -> np.ndarray:
  """Inverse of an affine ``[2, 3]``."""
  lin = np.linalg.inv(matrix[:, :2])
  return np.concatenate([lin, -(lin @ matrix[:, 2])[:, None]], axis=1)


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
  """Warps RGB ``image`` by ``matrix`` (source -> crop pixels) into a ``size`` x ``size`` crop (bicubic)."""
  img = Image.fromarray(image)
  m = np.asarray(matrix, np.float64)
  scale = np.sqrt(abs(np.linalg.det(m[:, :2])))
  factor = int(1.0 / scale) if scale < 0.5 else 1
  if factor > 1:  # Box-downsample first so that strong shrinking does not alias.
    img = img.reduce(factor)
    m = m.copy()
    m[:, :2] *= factor
  inv = _invert(m)
  out = img.transform(
    (size, size), Image.Transform.AFFINE, data=tuple(inv.reshape(-1)), resample=Image.Resampling.BICUBIC
  )
  return np.asarray(out)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
  """Crop ``[size, size, 3]`` whose five landmarks sit on the template (weighted least squares)."""
  return warp(image, umeyama(landmarks, template(size), WEIGHTS), size)


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Centre square crop resized to ``size`` (for frames that are already aligned)."""
  h, w = image.shape[:2]
  s = min(h, w)
  y, x = (h - s) // 2, (w - s) // 2
  img = Image.fromarray(image[y : y + s, x : x + s])
  if s != size:
    img = img.resize((size, size), Image.Resampling.BICUBIC)
  return np.asarray(img)


# ------------------------------------------------------------------------------------------------
# Detection.


@dataclasses.dataclass(frozen=True)
class Face:
  """One detection: box ``[x0, y0, x1, y1]``, confidence, landmarks ``[5, 2]`` (continuous pixels)."""

  box: np.ndarray
  score: float
  landmarks: np.ndarray

  @property
  def area(self) -> float:
    """Box area in pixels."""
    return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


class Detector:
  """MTCNN (the ``mtcnn`` package; its weights ship in the wheel) on a copy downscaled to ``max_side``."""

  def __init__(self, min_face_size: int = 20, max_side: int = 640):
    try:
      from mtcnn import MTCNN  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(
        "face alignment needs the mtcnn package: pip install mtcnn (for crops that are already "
        "aligned: predict --no-align / Predictor(align=False), align --aligner none)"
      ) from e
    self._mtcnn = MTCNN()
    self.min_face_size = min_face_size
    self.max_side = max_side

  def __call__(self, image: np.ndarray) -> list[Face]:
    """Faces in an RGB uint8 image ``[H, W, 3]``, largest first."""
    h, w = image.shape[:2]
    scale = min(1.0, self.max_side / max(h, w))
    img = image
    if scale < 1.0:
      img = np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR))
      scale = img.shape[1] / w
    out = self._mtcnn.detect_faces(
      img, output_type="numpy", box_format="xyxy", min_face_size=max(12, int(self.min_face_size * scale))
    )
    out = np.asarray(out, np.float64).reshape(-1, 16)
    # Rows: [image, x0, y0, x1, y1, score, 5 landmark x, 5 landmark y] in index pixels of the copy.
    faces = [
      Face(
        box=(r[1:5] + 0.5) / scale, score=float(r[5]), landmarks=(np.stack([r[6:11], r[11:16]], axis=1) + 0.5) / scale
      )
      for r in out
    ]
    return sorted(faces, key=lambda f: -f.area)


# ------------------------------------------------------------------------------------------------
# Prediction: frames -> aligned faces, and face ids along a video.

# (aligned crop uint8 [S, S, 3], face box (x0, y0, x1, y1) in the frame, detection score)
AlignedFace = tuple[np.ndarray, tuple[float, float, float, float], float | None]
Aligner = Callable[[np.ndarray], list[AlignedFace]]


def mtcnn_aligner(size: int = ALIGN_SIZE, *, min_face_size: int = 20) -> Aligner:
  """Detects faces (MTCNN, largest first) and aligns each to the five-point template."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:  # MTCNN runs on TensorFlow: keep it off the GPU that JAX uses.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tf.config.set_visible_devices([], "GPU")
  except (ImportError, RuntimeError, ValueError):
    pass
  detector = Detector(min_face_size=min_face_size)

  def detect_and_align(rgb: np.ndarray) -> list[AlignedFace]:
    return [(align_face(rgb, f.landmarks, size), tuple(float(v) for v in f.box), float(f.score)) for f in detector(rgb)]

  return detect_and_align


def whole_image(rgb: np.ndarray, size: int = ALIGN_SIZE) -> list[AlignedFace]:
  """The image as one already-aligned face: its centre square, resized to ``size``."""
  h, w = rgb.shape[:2]
  return [(centre_crop(rgb, size), (0.0, 0.0, float(w), float(h)), None)]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
  """Intersection over union of two boxes (x0, y0, x1, y1)."""
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


class FaceTracker:
  """Face ids along a video: each box takes the id of the best-overlapping box of the last frame."""

  def __init__(self, min_iou: float = 0.3):
    self.min_iou, self.file, self.last, self.next_id = min_iou, None, [], 0

  def assign(self, file: str, boxes: list[tuple[float, ...]]) -> list[int]:
    if file != self.file:
      self.file, self.last, self.next_id = file, [], 0
    pairs = sorted(((iou(b, lb), i, tid) for i, b in enumerate(boxes) for lb, tid in self.last), reverse=True)
    ids: dict[int, int] = {}
    used = set()
    for overlap, i, tid in pairs:
      if overlap >= self.min_iou and i not in ids and tid not in used:
        ids[i] = tid
        used.add(tid)
    for i in range(len(boxes)):
      if i not in ids:
        ids[i], self.next_id = self.next_id, self.next_id + 1
    self.last = [(b, ids[i]) for i, b in enumerate(boxes)]
    return [ids[i] for i in range(len(boxes))]
