"""Face alignment: MTCNN face and five landmarks, a least-squares similarity onto a fixed template, a square crop.

Landmark order everywhere: left eye, right eye, nose tip, left mouth corner, right mouth corner, where
"left" is the image's left. Coordinates are continuous pixels (the centre of pixel ``i`` is ``i + 0.5``).
The template keeps the framing of the official ME-GraphAU 256 px crops (eyes at 29 % of the height), so
the pipeline's resize-to-256 and 224 crop keep brows, eyes, nose and mouth.

CLI: ``python -m data_pipelines.align IN OUT [--size 256] [--workers 2]``; IN is an image, a video or a
folder of either. A report of frames without a face, with several faces or unreadable is written to
``OUT/align_report.json`` instead of stopping the run.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import dataclasses
import json
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageFile

LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# Five-point template in fractions of the output side: the framing of the official 256 px crops
# (MTCNN on data/BP4D/img/F001/T1/2440.jpg and data/DISFA/img/SN001/0.png: eye line at 0.29, eyes
# 0.34 apart, nose 0.58 and mouth 1.06 interocular distances below the eyes, mouth 0.83 wide), symmetric.
TEMPLATE = np.array([[0.330, 0.290], [0.670, 0.290], [0.500, 0.487], [0.359, 0.650], [0.641, 0.650]])
# Least-squares weights: eyes and nose are rigid; mouth corners move with AU12/15/20/25/26, so they
# count less and an expression barely moves the crop.
WEIGHTS = np.array([1.0, 1.0, 0.5, 0.25, 0.25])
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".avi", ".mp4", ".mov", ".mkv", ".wmv", ".mpg", ".mpeg", ".m4v")
ALIGNERS = ("mtcnn", "none")
MISSING_FACE = ("previous", "skip")
_MAX_PENDING_ARRAYS = 64  # Decoded frames held while waiting for a sequence's first face.

# Issues that can befall a frame: kind -> what was done about it.
ISSUES: dict[str, str] = {
    "missing_frame": "skipped: the image file does not exist",
    "corrupt_image": "skipped: the image could not be decoded (corrupt or truncated)",
    "tiny_image": "skipped: the image is smaller than the minimum side",
    "grayscale_image": "kept: converted to RGB",
    "multiple_faces": "kept: aligned on the largest face",
    "no_face_filled": "kept: aligned with the landmarks of the nearest earlier (or first later) frame of its sequence",
    "no_face": "skipped: no face found in the frame and none to borrow in its sequence",
}


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
  var_s = w @ np.sum(s0 ** 2, axis=1)
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
  out = img.transform((size, size), Image.Transform.AFFINE, data=tuple(inv.reshape(-1)),
                      resample=Image.Resampling.BICUBIC)
  return np.asarray(out)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
  """Crop ``[size, size, 3]`` whose five landmarks sit on the template (weighted least squares)."""
  return warp(image, umeyama(landmarks, template(size), WEIGHTS), size)


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Centre square crop resized to ``size`` (for frames that are already aligned)."""
  h, w = image.shape[:2]
  s = min(h, w)
  y, x = (h - s) // 2, (w - s) // 2
  img = Image.fromarray(image[y:y + s, x:x + s])
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
      from mtcnn import MTCNN  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("face alignment needs the mtcnn package: pip install mtcnn "
                        "(or use aligner='none' / --aligner none for frames that are already aligned)") from e
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
    out = self._mtcnn.detect_faces(img, output_type="numpy", box_format="xyxy",
                                   min_face_size=max(12, int(self.min_face_size * scale)))
    out = np.asarray(out, np.float64).reshape(-1, 16)
    # Rows: [image, x0, y0, x1, y1, score, 5 landmark x, 5 landmark y] in index pixels of the copy.
    faces = [Face(box=(r[1:5] + 0.5) / scale, score=float(r[5]),
                  landmarks=(np.stack([r[6:11], r[11:16]], axis=1) + 0.5) / scale) for r in out]
    return sorted(faces, key=lambda f: -f.area)


# ------------------------------------------------------------------------------------------------
# Loading with checks.


def load_image(path: str, min_side: int = 32) -> tuple[np.ndarray | None, str | None, str]:
  """Reads an image as RGB uint8; returns ``(image or None, issue kind or None, detail)``.

  Corrupt, truncated and tiny images give ``None`` with their issue; grayscale ones are converted
  (issue ``grayscale_image``). Nothing is raised for a bad file.
  """
  if not os.path.isfile(path):
    return None, "missing_frame", f"{path} does not exist"
  ImageFile.LOAD_TRUNCATED_IMAGES = False
  try:
    with Image.open(path) as im:
      im.load()
      mode = im.mode
      rgb = im.convert("RGB")
  except Exception as e:  # pylint: disable=broad-except  # PIL raises many types for bad files.
    return None, "corrupt_image", f"{path}: {type(e).__name__}: {e}"
  w, h = rgb.size
  if min(w, h) < min_side:
    return None, "tiny_image", f"{path} is {w}x{h} px, smaller than the minimum side {min_side} px"
  issue = "grayscale_image" if mode in ("1", "L", "LA", "I", "I;16", "F") else None
  return np.asarray(rgb), issue, (f"{path} has mode {mode}" if issue else "")


def _check_array(image: np.ndarray, min_side: int) -> tuple[np.ndarray | None, str | None, str]:
  """Same checks as load_image for a decoded frame (e.g. from a video)."""
  a = np.asarray(image)
  if a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 1):
    a2 = np.repeat(a.reshape(a.shape[0], a.shape[1], 1), 3, axis=2).astype(np.uint8)
    issue, detail = "grayscale_image", "single-channel frame"
  elif a.ndim == 3 and a.shape[2] in (3, 4):
    a2, issue, detail = a[..., :3].astype(np.uint8), None, ""
  else:
    return None, "corrupt_image", f"frame has shape {a.shape}, expected [H, W, 3]"
  if min(a2.shape[:2]) < min_side:
    return None, "tiny_image", f"frame is {a2.shape[1]}x{a2.shape[0]} px, smaller than {min_side} px"
  return a2, issue, detail


# ------------------------------------------------------------------------------------------------
# Batch alignment.


@dataclasses.dataclass(frozen=True)
class AlignConfig:
  """How frames are aligned."""

  size: int = 256  # Output side in px (the official crops are 256; the pipeline crops 224 from them).
  aligner: str = "mtcnn"  # "mtcnn", or "none" for frames already aligned (centre square crop + resize).
  missing_face: str = "previous"  # Frames without a face: "previous" (borrow landmarks) or "skip".
  min_image_side: int = 32  # Smaller images are skipped and counted.
  min_face_size: int = 20  # MTCNN's smallest face, px of the source frame.
  max_detect_side: int = 640  # Detection runs on a copy downscaled to this side (speed).
  workers: int = 0  # Processes; 0 = all cores, 1 = in this process.

  def __post_init__(self):
    if self.aligner not in ALIGNERS:
      raise AlignError(f"aligner must be one of {ALIGNERS}, got {self.aligner!r}")
    if self.missing_face not in MISSING_FACE:
      raise AlignError(f"missing_face must be one of {MISSING_FACE}, got {self.missing_face!r}")
    if self.size < 16:
      raise AlignError(f"size must be at least 16 px, got {self.size}")

  @property
  def num_workers(self) -> int:
    """Worker processes actually used."""
    return self.workers if self.workers > 0 else (os.cpu_count() or 1)


@dataclasses.dataclass
class Frame:
  """One input frame: an image file (``path``) or a decoded RGB array; ``sequence`` groups a clip."""

  key: str
  sequence: str = ""
  path: str | None = None
  array: np.ndarray | None = None
  meta: Any = None  # Carried through unchanged (e.g. labels); never sent to worker processes.


@dataclasses.dataclass
class Aligned:
  """The result for one Frame: the crop (None when skipped) and what happened."""

  frame: Frame
  image: np.ndarray | None
  landmarks: np.ndarray | None  # [5, 2] in the source frame; None when skipped or not detected.
  num_faces: int
  issues: tuple[str, ...]
  detail: str = ""


class IssueLog:
  """Every skipped or repaired input, by kind; nothing is dropped without an entry here."""

  def __init__(self, explained: dict[str, str] | None = None):
    self.items: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    self.explained = {**ISSUES, **(explained or {})}  # Kind -> what was done about it.

  def add(self, kind: str, item: str, detail: str = "") -> None:
    """Records one affected item."""
    self.items[kind].append((item, detail))

  def counts(self) -> dict[str, int]:
    """Kind -> number of items."""
    return {k: len(v) for k, v in sorted(self.items.items())}

  def summary(self, examples: int = 3) -> str:
    """One line per kind with a few examples."""
    if not self.items:
      return "no bad input"
    lines = []
    for k, v in sorted(self.items.items()):
      what = self.explained.get(k, "")
      shown = "; ".join(f"{i} ({d})" if d else i for i, d in v[:examples])
      lines.append(f"{k}: {len(v)}{' - ' + what if what else ''} - e.g. {shown}{' ...' if len(v) > examples else ''}")
    return "\n".join(lines)

  def to_json(self, max_items: int | None = None) -> dict[str, Any]:
    """``{"counts": ..., "items": {kind: [[item, detail], ...]}}`` (at most max_items per kind)."""
    return {"counts": self.counts(),
            "items": {k: [list(t) for t in v[:max_items]] for k, v in sorted(self.items.items())}}


_WORKER: dict[str, Any] = {}


def _init_worker(cfg: AlignConfig, threads: int) -> None:
  """Process initialiser: quiet TensorFlow, bound its threads, build one detector."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if cfg.aligner == "mtcnn" and threads > 0:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
  _WORKER["cfg"] = cfg
  _WORKER["detector"] = Detector(cfg.min_face_size, cfg.max_detect_side) if cfg.aligner == "mtcnn" else None


def _work(path: str | None, array: np.ndarray | None) -> tuple[Any, ...]:
  """Loads, checks, detects and aligns one frame in a worker; returns plain data."""
  cfg: AlignConfig = _WORKER["cfg"]
  if path is not None:
    img, issue, detail = load_image(path, cfg.min_image_side)
  else:
    img, issue, detail = _check_array(array, cfg.min_image_side)
  issues = (issue,) if issue else ()
  if img is None:
    return None, None, 0, issues, detail
  if cfg.aligner == "none":
    return centre_crop(img, cfg.size), None, 1, issues, detail
  faces = _WORKER["detector"](img)
  if not faces:
    return None, None, 0, issues, detail
  if len(faces) > 1:
    issues += ("multiple_faces",)
    detail = (detail + "; " if detail else "") + f"{len(faces)} faces, scores " + ", ".join(
        f"{f.score:.2f}" for f in faces)
  lm = faces[0].landmarks
  return align_face(img, lm, cfg.size), lm, len(faces), issues, detail


_POOL: dict[str, Any] = {}  # The worker pool, kept across calls with the same settings.


def _pool(cfg: AlignConfig, n: int) -> Any:
  """A spawn-based process pool for ``cfg`` (reused: TensorFlow and MTCNN load once per worker)."""
  from concurrent.futures import ProcessPoolExecutor  # pylint: disable=g-import-not-at-top
  if _POOL.get("key") != (cfg, n):
    shutdown()
    threads = max(1, (os.cpu_count() or 1) // n)
    _POOL["ex"] = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),  # TF does not survive fork.
                                      initializer=_init_worker, initargs=(cfg, threads))
    _POOL["key"] = (cfg, n)
    atexit.register(shutdown)  # Before interpreter teardown, which the pool's callbacks do not survive.
  return _POOL["ex"]


def shutdown() -> None:
  """Stops the worker processes, if any."""
  ex = _POOL.pop("ex", None)
  _POOL.pop("key", None)
  if ex is not None:
    ex.shutdown(wait=True, cancel_futures=True)


def _ordered_map(frames: Iterable[Frame], cfg: AlignConfig) -> Iterator[tuple[Frame, tuple[Any, ...]]]:
  """Runs _work over frames (in worker processes when cfg.num_workers > 1), keeping the input order."""
  n = cfg.num_workers
  if n <= 1 or cfg.aligner == "none":
    if _WORKER.get("cfg") != cfg:
      _init_worker(cfg, 0)
    for fr in frames:
      yield fr, _work(fr.path, fr.array)
    return
  ex = _pool(cfg, n)
  window: collections.deque = collections.deque()
  for fr in frames:
    window.append((fr, ex.submit(_work, fr.path, fr.array)))
    if len(window) >= 4 * n:
      f0, fut = window.popleft()
      yield f0, fut.result()
  while window:
    f0, fut = window.popleft()
    yield f0, fut.result()


def align_frames(frames: Iterable[Frame], cfg: AlignConfig = AlignConfig(), log: IssueLog | None = None,
                 progress: bool | str = False, total: int | None = None) -> Iterator[Aligned]:
  """Aligns frames in order; frames of one sequence must be consecutive.

  A frame without a face borrows the landmarks of the previous frame with one in its sequence (or of
  the first later one, at the start) when ``cfg.missing_face == "previous"``; otherwise, or if the
  whole sequence has none, it is skipped. Every issue is added to ``log``; skipped frames come out with
  ``image=None``.
  """
  log = log if log is not None else IssueLog()
  stream = _ordered_map(frames, cfg)
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    stream = tqdm(stream, total=total, desc=progress if isinstance(progress, str) else "align", unit="frame",
                  file=sys.stderr, dynamic_ncols=True)
  seq, last_lm = None, None
  pending: list[tuple[Aligned, bool]] = []  # Held until the sequence's first face: (item, needs landmarks).

  def borrow(item: Aligned, lm: np.ndarray) -> Aligned:
    fr = item.frame
    if fr.array is None:
      img, _, _ = load_image(fr.path, cfg.min_image_side)
    else:
      img, _, _ = _check_array(fr.array, cfg.min_image_side)
    item.image = align_face(img, lm, cfg.size)
    item.issues += ("no_face_filled",)
    return item

  def record(item: Aligned) -> Aligned:
    item.frame.array = None
    for k in item.issues:
      log.add(k, item.frame.key, item.detail if k != "no_face_filled" else "")
    return item

  def release(lm: np.ndarray | None) -> Iterator[Aligned]:
    """Yields the held items in order, filled with ``lm`` (or skipped as no_face when None)."""
    for it, needs in pending:
      if needs:
        if lm is None:
          it.issues += ("no_face",)
        else:
          it = borrow(it, lm)
      yield record(it)
    pending.clear()

  for fr, (img, lm, nfaces, issues, detail) in stream:
    if fr.sequence != seq:
      yield from release(None)
      seq, last_lm = fr.sequence, None
    item = Aligned(fr, img, lm, nfaces, tuple(issues), detail)
    unreadable = any(k in ("missing_frame", "corrupt_image", "tiny_image") for k in issues)
    if img is not None or unreadable:  # Aligned, or skipped for its file.
      if lm is not None:
        last_lm = lm
        yield from release(lm)
      if pending:
        pending.append((item, False))
      else:
        yield record(item)
    elif cfg.missing_face == "skip":
      item.issues += ("no_face",)
      yield record(item)
    elif last_lm is not None:
      yield record(borrow(item, last_lm))
    else:
      pending.append((item, True))
      if sum(it.frame.array is not None for it, needs in pending if needs) > _MAX_PENDING_ARRAYS:
        yield from release(None)
  yield from release(None)


# ------------------------------------------------------------------------------------------------
# Video frames.


def video_frames(path: str) -> Iterator[np.ndarray]:
  """Decodes a video into RGB uint8 frames (OpenCV: pip install opencv-python-headless)."""
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"reading the video {path} needs OpenCV: pip install opencv-python-headless "
                      "(or extract its frames to a folder first)") from e
  if not os.path.isfile(path):
    raise FileNotFoundError(f"video not found: {path}")
  cap = cv2.VideoCapture(path)
  if not cap.isOpened():
    raise AlignError(f"{path}: OpenCV cannot open this video (corrupt file or unsupported codec); "
                     "re-encode it or extract its frames to a folder (e.g. with ffmpeg) and use that folder")
  try:
    while True:
      ok, bgr = cap.read()
      if not ok:
        break
      yield bgr[:, :, ::-1].copy() if bgr.ndim == 3 else bgr
  finally:
    cap.release()


def video_frame_count(path: str) -> int | None:
  """Frame count from the container header (may be approximate), or None."""
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  cap = cv2.VideoCapture(path)
  try:
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
  finally:
    cap.release()
  return n or None


# ------------------------------------------------------------------------------------------------
# CLI.


def _collect(src: str, dst: str) -> tuple[list[tuple[str, str, str | None, str | None]], int]:
  """Inputs under ``src``: (key, sequence, image path or None, video path or None) and the frame total."""
  if os.path.isfile(src):
    ext = os.path.splitext(src)[1].lower()
    if ext in VIDEO_EXTS:
      return [("", "", None, src)], video_frame_count(src) or 0
    if ext in IMAGE_EXTS:
      return [(os.path.basename(src), "", src, None)], 1
    raise AlignError(f"{src}: not an image ({', '.join(IMAGE_EXTS)}) or video ({', '.join(VIDEO_EXTS)})")
  if not os.path.isdir(src):
    raise FileNotFoundError(f"input not found: {src}")
  items, total = [], 0
  for d, dirs, files in os.walk(src):
    dirs.sort()
    if os.path.abspath(d).startswith(os.path.abspath(dst) + os.sep) or os.path.abspath(d) == os.path.abspath(dst):
      dirs.clear()
      continue
    rel_dir = os.path.relpath(d, src)
    rel_dir = "" if rel_dir == "." else rel_dir
    for f in sorted(files, key=_natural_key):
      ext = os.path.splitext(f)[1].lower()
      rel = os.path.join(rel_dir, f)
      if ext in IMAGE_EXTS:
        items.append((rel, rel_dir, os.path.join(d, f), None))
        total += 1
      elif ext in VIDEO_EXTS:
        items.append((os.path.splitext(rel)[0], os.path.splitext(rel)[0], None, os.path.join(d, f)))
        total += video_frame_count(os.path.join(d, f)) or 0
  if not items:
    raise AlignError(f"{src} holds no images ({', '.join(IMAGE_EXTS)}) or videos ({', '.join(VIDEO_EXTS)})")
  return items, total


def _natural_key(name: str) -> tuple[Any, ...]:
  """Sort key that puts 2.jpg before 10.jpg."""
  stem, ext = os.path.splitext(name)
  return (0, int(stem), ext) if stem.isdigit() else (1, stem, ext)


def align_path(src: str, dst: str, cfg: AlignConfig = AlignConfig(), video_ext: str = ".png",
               progress: bool = True, report: str | None = None) -> IssueLog:
  """Aligns an image, a video or a folder of them into ``dst``; writes the report; returns the log.

  Images keep their relative path; a video ``V`` becomes ``dst/V/<i><video_ext>`` with ``i`` counted
  from 0 (the DISFA naming of the official lists).
  """
  items, total = _collect(src, dst)
  to_file = os.path.isfile(src) and os.path.splitext(dst)[1].lower() in IMAGE_EXTS
  log = IssueLog()

  def frames() -> Iterator[Frame]:
    for key, seq, path, video in items:
      if video is None:
        yield Frame(key=key, sequence=seq, path=path)
        continue
      for i, arr in enumerate(video_frames(video)):
        yield Frame(key=os.path.join(key, f"{i}{video_ext}"), sequence=video, array=arr)

  written = 0
  for res in align_frames(frames(), cfg, log, progress="align" if progress else False, total=total or None):
    if res.image is None:
      continue
    out = dst if to_file else os.path.join(dst, res.frame.key)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    img = Image.fromarray(res.image)
    if out.lower().endswith((".jpg", ".jpeg")):
      img.save(out, quality=95)
    else:
      img.save(out)
    written += 1
  report = report or os.path.join(os.path.dirname(dst) if to_file else dst, "align_report.json")
  os.makedirs(os.path.dirname(report) or ".", exist_ok=True)
  with open(report, "w") as f:
    json.dump({"input": src, "output": dst, "config": dataclasses.asdict(cfg), "written": written,
               "issues_explained": ISSUES, **log.to_json()}, f, indent=1)
  return log


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("input", help="an image, a video, or a folder of images and/or videos")
  p.add_argument("output", help="output folder (or an image file name when the input is one image)")
  p.add_argument("--size", type=int, default=256, help="crop side in px (default 256, as the official crops)")
  p.add_argument("--aligner", choices=ALIGNERS, default="mtcnn", help="'none': frames already aligned")
  p.add_argument("--missing-face", choices=MISSING_FACE, default="previous",
                 help="frames without a face: borrow the landmarks of the previous frame of the clip, or skip")
  p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
  p.add_argument("--max-detect-side", type=int, default=640, help="detect on a copy downscaled to this side")
  p.add_argument("--min-face-size", type=int, default=20)
  p.add_argument("--video-ext", default=".png", help="image type of frames written from videos")
  p.add_argument("--report", default=None, help="report path (default OUTPUT/align_report.json)")
  p.add_argument("--no-progress", action="store_true")
  a = p.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  cfg = AlignConfig(size=a.size, aligner=a.aligner, missing_face=a.missing_face, workers=a.workers,
                    max_detect_side=a.max_detect_side, min_face_size=a.min_face_size)
  try:
    log = align_path(a.input, a.output, cfg, video_ext=a.video_ext, progress=not a.no_progress, report=a.report)
  except (AlignError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(log.summary(), file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
