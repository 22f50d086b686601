"""Face alignment: MTCNN face and five landmarks, a least-squares similarity onto a fixed template, a square crop.

Landmark order everywhere: left eye, right eye, nose tip, left mouth corner, right mouth corner, where
"left" is the image's left. The detector, the template and the geometry are ``megraph_jax.predict.faces`` (shared
with prediction); images and videos are read by ``megraph_jax.predict.media``.

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
from PIL import Image

from data_pipelines.frame_checks import ISSUES, IssueLog, check_array, load_image  # noqa: F401  (align.IssueLog etc.)
from megraph_jax.predict import media
from megraph_jax.predict.faces import AlignError, Detector, align_face, centre_crop
from megraph_jax.predict.media import IMAGE_EXTS, VIDEO_EXTS

ALIGNERS = ("mtcnn", "none")
MISSING_FACE = ("previous", "skip")
_MAX_PENDING_ARRAYS = 64  # Decoded frames held while waiting for a sequence's first face.

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
    img, issue, detail = check_array(array, cfg.min_image_side)
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
    detail = (
      (detail + "; " if detail else "") + f"{len(faces)} faces, scores " + ", ".join(f"{f.score:.2f}" for f in faces)
    )
  lm = faces[0].landmarks
  return align_face(img, lm, cfg.size), lm, len(faces), issues, detail


_POOL: dict[str, Any] = {}  # The worker pool, kept across calls with the same settings.


def _pool(cfg: AlignConfig, n: int) -> Any:
  """A spawn-based process pool for ``cfg`` (reused: TensorFlow and MTCNN load once per worker)."""
  from concurrent.futures import ProcessPoolExecutor  # pylint: disable=g-import-not-at-top

  if _POOL.get("key") != (cfg, n):
    shutdown()
    threads = max(1, (os.cpu_count() or 1) // n)
    _POOL["ex"] = ProcessPoolExecutor(
      n,
      mp_context=multiprocessing.get_context("spawn"),  # TF does not survive fork.
      initializer=_init_worker,
      initargs=(cfg, threads),
    )
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


def align_frames(
  frames: Iterable[Frame],
  cfg: AlignConfig = AlignConfig(),
  log: IssueLog | None = None,
  progress: bool | str = False,
  total: int | None = None,
) -> Iterator[Aligned]:
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

    stream = tqdm(
      stream,
      total=total,
      desc=progress if isinstance(progress, str) else "align",
      unit="frame",
      file=sys.stderr,
      dynamic_ncols=True,
    )
  seq, last_lm = None, None
  pending: list[tuple[Aligned, bool]] = []  # Held until the sequence's first face: (item, needs landmarks).

  def borrow(item: Aligned, lm: np.ndarray) -> Aligned:
    fr = item.frame
    if fr.array is None:
      img, _, _ = load_image(fr.path, cfg.min_image_side)
    else:
      img, _, _ = check_array(fr.array, cfg.min_image_side)
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
  """Decodes a video into RGB uint8 frames (``megraph_jax.predict.media``; OpenCV: opencv-python-headless)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"video not found: {path}")
  for frame in media.iter_video(path):
    if frame.image is None:
      raise AlignError(f"{frame.error}; or extract its frames to a folder (e.g. with ffmpeg) and use that folder")
    yield frame.image


def video_frame_count(path: str) -> int | None:
  """Frame count from the container header (may be approximate), or None."""
  return media.video_info(path)[0]


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


def align_path(
  src: str,
  dst: str,
  cfg: AlignConfig = AlignConfig(),
  video_ext: str = ".png",
  progress: bool = True,
  report: str | None = None,
) -> IssueLog:
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
    json.dump(
      {
        "input": src,
        "output": dst,
        "config": dataclasses.asdict(cfg),
        "written": written,
        "issues_explained": ISSUES,
        **log.to_json(),
      },
      f,
      indent=1,
    )
  return log


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("input", help="an image, a video, or a folder of images and/or videos")
  p.add_argument("output", help="output folder (or an image file name when the input is one image)")
  p.add_argument("--size", type=int, default=256, help="crop side in px (default 256, as the official crops)")
  p.add_argument("--aligner", choices=ALIGNERS, default="mtcnn", help="'none': frames already aligned")
  p.add_argument(
    "--missing-face",
    choices=MISSING_FACE,
    default="previous",
    help="frames without a face: borrow the landmarks of the previous frame of the clip, or skip",
  )
  p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
  p.add_argument("--max-detect-side", type=int, default=640, help="detect on a copy downscaled to this side")
  p.add_argument("--min-face-size", type=int, default=20)
  p.add_argument("--video-ext", default=".png", help="image type of frames written from videos")
  p.add_argument("--report", default=None, help="report path (default OUTPUT/align_report.json)")
  p.add_argument("--no-progress", action="store_true")
  a = p.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  cfg = AlignConfig(
    size=a.size,
    aligner=a.aligner,
    missing_face=a.missing_face,
    workers=a.workers,
    max_detect_side=a.max_detect_side,
    min_face_size=a.min_face_size,
  )
  try:
    log = align_path(a.input, a.output, cfg, video_ext=a.video_ext, progress=not a.no_progress, report=a.report)
  except (AlignError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(log.summary(), file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
