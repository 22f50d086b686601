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
from PIL import Image, ImageOps

from megraph_jax import optional
from megraph_jax.predict import warp as warplib

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


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
  """Warps RGB ``image`` by ``matrix`` (source -> crop pixels) into a ``size`` x ``size`` crop: PIL's bicubic
  affine transform, on the device (:func:`megraph_jax.predict.warp.align_faces`, which batches many faces)."""
  return warplib.align_faces([image], [0], [matrix], size)[0]


def alignment(landmarks: np.ndarray, size: int = ALIGN_SIZE) -> np.ndarray:
  """The similarity ``[2, 3]`` (source -> crop px) that puts five ``landmarks`` on the template of a ``size`` crop
  (weighted least squares)."""
  return umeyama(landmarks, template(size), WEIGHTS)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
  """Crop ``[size, size, 3]`` whose five landmarks sit on the template (weighted least squares)."""
  return warp(image, alignment(landmarks, size), size)


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


MTCNN_WINDOW = 12  # px: the smallest face MTCNN's first network (PNet) sees
ONET_SIZE = 48  # px: input side of MTCNN's last network (ONet: score, box and landmarks of one face)
ONET_THRESHOLD = 0.8  # MTCNN's own ONet acceptance threshold
PYRAMID_STEP = 0.709  # MTCNN's image pyramid: each level 0.709 of the one before
RELAXED = dict(threshold_pnet=0.5, threshold_rnet=0.6, threshold_onet=0.7)  # second try on stills with no face
EXTRA_ONET = 0.85  # ONet's threshold for faces that only the extra passes of a still find (0.8: one false positive
# on the equalised 2560 px grayscale astronaut's suit, scored 0.81; 7 of ~70 extra true faces scored 0.80-0.85)
# Detection passes for :meth:`Detector.detect_passes`: name -> (image transform, detect_many arguments).
PASSES: dict[str, tuple[str | None, dict]] = {
  "base": (None, {}),
  "relaxed": (None, RELAXED),
  "relaxed-half-step": (None, dict(shift=PYRAMID_STEP**0.5, **RELAXED)),
  "relaxed-pr": (None, dict(threshold_pnet=0.5, threshold_rnet=0.6, threshold_onet=EXTRA_ONET)),  # ONet kept strict
  "finer": (None, dict(scale_factor=0.85, threshold_onet=EXTRA_ONET)),  # levels 0.85 apart instead of 0.709
  "equalized": ("equalize", dict(threshold_onet=EXTRA_ONET)),  # luminance histogram equalised
  "mirrored": ("mirror", dict(threshold_onet=EXTRA_ONET)),  # left-right mirror
}
# A still's passes after its plain detection (Detector.still). The default runs them only while nothing is found,
# stopping at the first pass that finds a face (a still whose face plain MTCNN finds costs nothing more; the passes
# that reuse the plain pass's compiled pyramid come first); THOROUGH runs the four extra passes on every still
# (faces that plain MTCNN missed beside one it found, as in group photos; the equalised and mirrored copies in one
# batched call), then the relaxed tries if there is still none. Recall, false positives and cost per still on
# benchmarks/face_recall.py's hard stills: README, "AUs of your own photos and videos". Videos are not affected.
STILL_PASSES = ("?relaxed-pr", "?equalized", "?mirrored", "?finer", "?relaxed", "?relaxed-half-step")
THOROUGH_PASSES = ("relaxed-pr", "equalized", "mirrored", "finer", "?relaxed", "?relaxed-half-step")


def detection_scale(h: int, w: int, min_face_size: int | None = None, max_side: int = 2048) -> tuple[float, int]:
  """(scale of the copy MTCNN runs on, smallest face searched in image px), chosen from the image size.

  The smallest face is ``min_face_size`` or, by default, 1/20 of the shorter side clipped to 20..40 px (so a face of
  40 px or more is searched at any image size). The copy is shrunk as far as that face keeps 24 px (twice PNet's
  window, so the landmarks keep their precision) and to at most ``max_side``: a 640x360 frame is used as is, a
  4000x3000 photo runs at 0.6 (2400x1800 -> capped to 2048 a side).
  """
  min_face = int(min_face_size) if min_face_size else int(np.clip(min(h, w) / 20, 20, 40))
  scale = min(1.0, 2 * MTCNN_WINDOW / min_face, max_side / max(h, w))
  return scale, min_face


DETECTORS = ("jax", "mtcnn-tf")  # MTCNN in JAX (megraph_jax.predict.mtcnn), or the mtcnn package on TensorFlow


class Detector:
  """MTCNN on a copy scaled by :func:`detection_scale`: by default in JAX on the accelerator
  (:mod:`megraph_jax.predict.mtcnn`, no TensorFlow), or with ``backend='mtcnn-tf'`` the ``mtcnn`` package on
  TensorFlow (the reference; the same faces to 1e-3 px). Both use the weights that ship in the ``mtcnn`` wheel.

  ``detect`` finds faces in one image, ``detect_many`` in a batch of same-sized frames (one MTCNN call), and
  ``refine`` re-runs only MTCNN's last network (ONet) on the boxes of the previous frame: a face that moved
  little keeps a high score and gets its new box and landmarks at a fraction of a full detection's cost.
  """

  def __init__(
    self,
    min_face_size: int | None = None,
    max_side: int = 2048,
    backend: str = "jax",
    still_passes: Sequence[str] = STILL_PASSES,
  ):
    if backend not in DETECTORS:
      raise AlignError(f"the detector must be one of {', '.join(DETECTORS)}, got {backend!r}")
    unknown = [p for p in still_passes if p.lstrip("?") not in PASSES]
    if unknown:
      raise AlignError(f"unknown detection passes {unknown}; known: {', '.join(PASSES)}")
    self.backend, self.still_passes = backend, tuple(still_passes)
    if backend == "jax":
      from megraph_jax.predict import mtcnn  # pylint: disable=import-outside-toplevel  (JAX + Flax: on use)

      self._mtcnn = mtcnn.MTCNN()
    else:
      os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
      try:  # MTCNN runs on TensorFlow, kept off the GPU that JAX uses
        optional.tensorflow()
      except ImportError:
        pass  # mtcnn's own import below names what is missing
      MTCNN = optional.require("mtcnn").MTCNN  # noqa: N806
      self._mtcnn = MTCNN()
    self._onet = None
    self.min_face_size = min_face_size
    self.max_side = max_side

  def __call__(self, image: np.ndarray, *, relaxed: bool = False) -> list[Face]:
    """Faces in an RGB uint8 image ``[H, W, 3]``, largest first; ``relaxed``: a still, which also gets the extra
    passes of :meth:`still`."""
    faces = self.detect_many([image])[0]
    return self.still(image, faces) if relaxed else faces

  def still(self, image: np.ndarray, found: Sequence[Face] = ()) -> list[Face]:
    """The faces of a still: ``found`` (its plain detection) plus those of the passes ``still_passes``
    (:data:`STILL_PASSES`, while nothing is found: lower PNet/RNet thresholds, the contrast-equalised and the
    mirrored image, a finer pyramid, ONet's verdict kept; then lower thresholds for all three networks;
    :data:`THOROUGH_PASSES`: the first four on every still)."""
    return self.detect_passes(image, self.still_passes, found)

  def detect_passes(self, image: np.ndarray, passes: Sequence[str], found: Sequence[Face] = ()) -> list[Face]:
    """``found`` plus the faces of ``image`` found by detection passes (names of :data:`PASSES`; a face found again
    by a later pass is kept as the first one found it, :func:`merge`), largest first. A name written ``'?name'``
    runs only when nothing was found before it; consecutive unconditional passes with the same arguments (the
    equalised and the mirrored copy) run as one batched call."""
    found, todo = list(found), list(passes)
    while todo:
      name = todo.pop(0)
      conditional = name.startswith("?")
      if conditional:
        if found:
          continue
        name = name[1:]
      group = [name]
      while not conditional and todo and not todo[0].startswith("?"):
        if PASSES[todo[0]][1] != PASSES[name][1]:
          break
        group.append(todo.pop(0))
      copies = [_TRANSFORMS[PASSES[g][0]](image) for g in group]
      for g, got in zip(group, self.detect_many(copies, **PASSES[name][1])):
        if PASSES[g][0] == "mirror":
          got = [mirrored(f, image.shape[1]) for f in got]
        found = merge(found, got)
    return found

  def retry(self, image: np.ndarray) -> list[Face]:
    """Faces of a still where :meth:`detect_many` found nothing: the passes of :meth:`still`."""
    return self.still(image)

  def detect_many(self, images: Sequence[np.ndarray], *, shift: float = 1.0, **thresholds) -> list[list[Face]]:
    """Faces of each image (all of one size), largest first; one batched MTCNN call (``shift`` scales the copy)."""
    h, w = images[0].shape[:2]
    if any(im.shape != images[0].shape for im in images):
      raise ValueError("detect_many: images of different sizes; batch frames of one size")
    scale, min_face = detection_scale(h, w, self.min_face_size, self.max_side)
    scale *= shift
    if min(h, w) * scale < MTCNN_WINDOW or min(h, w) < min_face:
      return [[] for _ in images]  # smaller than the smallest face: nothing to find
    size = (round(w * scale), round(h * scale))
    copies = [
      np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BILINEAR)) if scale < 1 else im for im in images
    ]
    sx = size[0] / w if scale < 1 else 1.0
    min_face_size = max(MTCNN_WINDOW, int(min_face * sx))
    if self.backend == "jax":
      out = self._mtcnn.detect(copies, min_face_size=min_face_size, **thresholds)
    else:
      out = self._mtcnn.detect_faces(
        list(copies), output_type="numpy", box_format="xyxy", min_face_size=min_face_size, **thresholds
      )
    out = np.asarray(out, np.float64).reshape(-1, 16)
    # Rows: [image, x0, y0, x1, y1, score, 5 landmark x, 5 landmark y] in index pixels of the copy.
    per_image: list[list[Face]] = [[] for _ in images]
    for r in out:
      lm = (np.stack([r[6:11], r[11:16]], axis=1) + 0.5) / sx
      per_image[int(r[0])].append(Face(box=(r[1:5] + 0.5) / sx, score=float(r[5]), landmarks=lm))
    return [sorted(f, key=lambda f: -f.area) for f in per_image]

  def refine(self, image: np.ndarray, boxes: Sequence[np.ndarray]) -> list[Face]:
    """ONet on the squared ``boxes`` (continuous px) of ``image``: one refined :class:`Face` per box, same order."""
    if self.backend == "jax":
      squares = [_square(b) for b in boxes]
      offsets, marks, scores = self._mtcnn.refit(image, np.asarray(squares).reshape(-1, 4))
      return [_refined(sq, off, lm, sc) for sq, off, lm, sc in zip(squares, offsets, marks, scores)]
    cv2 = optional.require("cv2")
    if self._onet is None:  # one traced graph for any number of boxes: 3x faster than the eager Keras call
      tf = optional.tensorflow()
      onet = self._mtcnn.get_stage(stage_id=3).model
      spec = tf.TensorSpec([None, ONET_SIZE, ONET_SIZE, 3], tf.float32)
      self._onet = tf.function(lambda x: onet(x, training=False), input_signature=[spec])
    norm = (np.asarray(image, np.float32) - 127.5) / 128.0  # MTCNN's input normalisation
    squares, patches = [], []
    for b in boxes:
      x0, y0, x1, y1 = sq = _square(b)
      squares.append(sq)
      step = (x1 - x0) / (ONET_SIZE - 1)
      m = np.array([[step, 0.0, x0], [0.0, step, y0]])  # patch px -> image px (bilinear, zero outside)
      patches.append(cv2.warpAffine(norm, m, (ONET_SIZE, ONET_SIZE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
    offsets, marks, scores = (np.asarray(t, np.float64) for t in self._onet(np.stack(patches)))
    return [_refined(sq, off, lm, sc[-1]) for sq, off, lm, sc in zip(squares, offsets, marks, scores)]

  def track(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[list[Face]]:
    """:meth:`refine` along same-sized frames: the faces of each frame refined from those of the frame before
    (the first from ``boxes``), in the order of ``boxes``. In JAX one call on the device for all the frames
    (:meth:`megraph_jax.predict.mtcnn.MTCNN.refit_along`); the caller keeps the frames up to the first whose faces
    it does not accept."""
    if not len(boxes):
      return [[] for _ in images]
    if self.backend != "jax":
      out = []
      for image in images:
        out.append(self.refine(image, boxes))
        boxes = [f.box for f in out[-1]]
      return out
    squares, offsets, marks, scores = self._mtcnn.refit_along(images, np.asarray([_square(b) for b in boxes]))
    return [
      [_refined(sq, off, lm, sc) for sq, off, lm, sc in zip(*frame)] for frame in zip(squares, offsets, marks, scores)
    ]


def equalized(image: np.ndarray) -> np.ndarray:
  """``image`` with its luminance histogram equalised (colour kept): faces in low-contrast, dark or washed-out
  photos come out."""
  y, cb, cr = Image.fromarray(image).convert("YCbCr").split()
  return np.asarray(Image.merge("YCbCr", (ImageOps.equalize(y), cb, cr)).convert("RGB"))


_TRANSFORMS: dict[str | None, Callable[[np.ndarray], np.ndarray]] = {
  None: lambda im: im,
  "equalize": equalized,
  "mirror": lambda im: np.ascontiguousarray(im[:, ::-1]),
}


def mirrored(face: Face, width: int) -> Face:
  """A face found in the left-right mirror of an image ``width`` px wide, in the image (landmarks swapped back to
  left eye, right eye, nose, left and right mouth corners of the image)."""
  x0, y0, x1, y1 = face.box
  lm = face.landmarks[[1, 0, 2, 4, 3]].copy()
  lm[:, 0] = width - lm[:, 0]
  return Face(box=np.array([width - x1, y0, width - x0, y1]), score=face.score, landmarks=lm)


def merge(found: Sequence[Face], more: Sequence[Face], min_iou: float = 0.3) -> list[Face]:
  """``found`` plus the faces of ``more`` (a later pass) that overlap none of them by IoU > ``min_iou``, largest
  first: a face keeps the box and landmarks of the first pass that found it."""
  kept = list(found)
  for f in sorted(more, key=lambda f: -f.score):
    if all(iou(f.box, k.box) <= min_iou for k in kept):
      kept.append(f)
  return sorted(kept, key=lambda f: -f.area)


def _square(box: np.ndarray) -> tuple[float, float, float, float]:
  """A box (continuous px) as the square of its longer side around its centre, in index px (as MTCNN's boxes)."""
  x0, y0, x1, y1 = np.asarray(box, np.float64) - 0.5
  side = max(x1 - x0, y1 - y0)
  x0, y0 = (x0 + x1 - side) / 2, (y0 + y1 - side) / 2
  return x0, y0, x0 + side, y0 + side


def _refined(square: Sequence[float], offset: np.ndarray, marks: np.ndarray, score: float) -> Face:
  """The :class:`Face` of ONet's outputs on ``square`` (index px): MTCNN's box arithmetic (inclusive ends)."""
  x0, y0, x1, y1 = square
  bw, bh = x1 - x0 + 1, y1 - y0 + 1
  lx, ly = bw * marks[0:5] + x0 - 1, bh * marks[5:10] + y0 - 1
  box = np.array([x0, y0, x1, y1]) + offset * np.array([bw, bh, bw, bh])
  return Face(box=box + 0.5, score=float(score), landmarks=np.stack([lx, ly], axis=1) + 0.5)


# ------------------------------------------------------------------------------------------------
# Prediction: frames -> aligned faces, and face ids along a video.

# (aligned crop uint8 [S, S, 3], face box (x0, y0, x1, y1) in the frame, detection score)
AlignedFace = tuple[np.ndarray, tuple[float, float, float, float], float | None]
Aligner = Callable[[np.ndarray], list[AlignedFace]]


def mtcnn_aligner(size: int = ALIGN_SIZE, *, min_face_size: int | None = None, backend: str = "jax") -> Aligner:
  """Detects faces (MTCNN, largest first; as a still: with the extra passes of :meth:`Detector.still`) and aligns
  each."""
  detector = Detector(min_face_size=min_face_size, backend=backend)

  def detect_and_align(rgb: np.ndarray) -> list[AlignedFace]:
    return [aligned(rgb, f, size) for f in detector(rgb, relaxed=True)]

  return detect_and_align


def aligned(rgb: np.ndarray, face: Face, size: int = ALIGN_SIZE) -> AlignedFace:
  """A detection as (aligned crop, box, score)."""
  return aligned_as(face, align_face(rgb, face.landmarks, size))


def aligned_as(face: Face, crop: np.ndarray) -> AlignedFace:
  """A detection and its aligned crop as (crop, box, score)."""
  return crop, tuple(float(v) for v in face.box), float(face.score)


def whole_image(rgb: np.ndarray) -> list[AlignedFace]:
  """The whole image as one face (``--no-align``): the eval transform then does exactly the official demo's
  Resize(256) (shorter side) + CenterCrop(224), for images of any size and aspect ratio."""
  h, w = rgb.shape[:2]
  return [(rgb, (0.0, 0.0, float(w), float(h)), None)]


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
