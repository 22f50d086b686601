"""Reading images and videos, defined once (prediction and ``data_pipelines/align.py`` use it): files, folders
and videos as a stream of RGB frames; unreadable inputs become error frames, not exceptions."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from megraph_jax import optional
from megraph_jax.errors import CaptureError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")


@dataclasses.dataclass
class Frame:
  """One image or video frame of an input file (``image`` is None when it could not be read)."""

  file: str  # the path as given (or found in a folder)
  index: int  # frame number within a video (or animated GIF); 0 for a still image
  image: np.ndarray | None  # RGB uint8 [H, W, 3]
  time: float | None = None  # seconds from the start of a video (None for stills / unknown fps)
  is_video: bool = False
  error: str | None = None  # why the file (or frame) could not be read


class MediaError(Exception):
  """An input file that cannot be read as an image or a video."""


def is_media(path: str) -> bool:
  """Whether ``path`` has an image or video extension."""
  return path.lower().endswith(IMAGE_EXTS + VIDEO_EXTS)


def is_video(path: str) -> bool:
  """Whether ``path`` has a video extension (animated GIFs are decided when read)."""
  return path.lower().endswith(VIDEO_EXTS)


def expand_inputs(paths: Iterable[str | os.PathLike], *, recursive: bool = True) -> list[str]:
  """Files of ``paths`` in order; folders give their image/video files, sorted (others are skipped).

  Paths that do not exist are kept, so that reading them reports the problem in the output.
  """
  out = []
  for p in paths:
    p = os.fspath(p)
    if os.path.isdir(p):
      found = []
      for root, dirs, files in os.walk(p):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if is_media(f) and not f.startswith(".")]
        if not recursive:
          break
      out += found
    else:
      out.append(p)
  return out


def _to_rgb(im: Image.Image) -> np.ndarray:
  if im.mode in ("RGBA", "LA", "P") or (im.mode == "RGB" and "transparency" in im.info):
    im = im.convert("RGBA")
    background = Image.new("RGBA", im.size, (255, 255, 255, 255))
    im = Image.alpha_composite(background, im)
  return np.asarray(im.convert("RGB"), dtype=np.uint8)


def as_rgb(image: np.ndarray, name: str = "<array>") -> np.ndarray:
  """An in-memory image as RGB uint8 ``[H, W, 3]``: grayscale ``[H, W]`` / ``[H, W, 1]`` is repeated, RGBA is
  composited on white (as files are); other shapes or dtypes raise :class:`MediaError` naming ``name``."""
  a = np.asarray(image)
  if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)):
    raise MediaError(
      f"{name}: expected a uint8 image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {a.dtype} {a.shape}"
    )
  if a.ndim == 3 and a.shape[-1] == 3:
    return a
  if a.ndim == 3 and a.shape[-1] == 4:
    return _to_rgb(Image.fromarray(a, "RGBA"))
  return np.repeat(a.reshape(*a.shape[:2], 1), 3, axis=-1)


def read_image(path: str, *, plain: bool = False) -> np.ndarray:
  """RGB uint8 ``[H, W, 3]`` of a still image, EXIF orientation applied and transparency composited on white;
  ``plain=True`` gives the pixels as stored, PIL's ``convert('RGB')`` (the official ``pil_loader``: no EXIF
  rotation, alpha dropped). Raises :class:`MediaError`."""
  return read_image_and_mode(path, plain=plain)[0]


def read_image_and_mode(path: str, *, plain: bool = False) -> tuple[np.ndarray, str]:
  """:func:`read_image` and the file's PIL mode (``'L'`` for grayscale, ``'RGB'``, ...)."""
  try:
    with Image.open(path) as im:
      im.load()
      if plain:
        return np.asarray(im.convert("RGB"), dtype=np.uint8), im.mode
      return _to_rgb(ImageOps.exif_transpose(im)), im.mode
  except FileNotFoundError as e:
    raise MediaError(f"{path}: no such file") from e
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise MediaError(
      f"{path}: not a readable image ({type(e).__name__}: {e}); "
      "check that the file is complete and in a common format (JPEG, PNG, ...)"
    ) from e


def _num_gif_frames(path: str) -> int:
  try:
    with Image.open(path) as im:
      return int(getattr(im, "n_frames", 1))
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
    return 1


def _iter_gif(path: str, every: int, max_frames: int | None) -> Iterator[Frame]:
  with Image.open(path) as im:
    t, emitted = 0.0, 0
    for i in range(im.n_frames):
      im.seek(i)
      if i % every == 0:
        yield Frame(path, i, _to_rgb(im.copy()), time=t, is_video=True)
        emitted += 1
        if max_frames is not None and emitted >= max_frames:
          return
      t += float(im.info.get("duration", 100)) / 1000.0


def _open_video(path: str | int):
  try:
    cv2 = optional.require("cv2")
  except ImportError as e:
    raise MediaError(f"{path}: reading videos needs OpenCV: pip install opencv-python-headless") from e
  cap = cv2.VideoCapture(path)
  if not cap.isOpened():
    cap.release()
    raise MediaError(
      f"{path}: cannot open as a video (missing, corrupt, or a codec OpenCV's FFmpeg lacks); "
      "re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4"
    )
  return cv2, cap


def video_info(path: str) -> tuple[int | None, float | None]:
  """(frame count, frames per second) of a video as its container states them (None if unknown)."""
  if path.lower().endswith(".gif"):
    return _num_gif_frames(path), None
  try:
    cv2, cap = _open_video(path)
  except MediaError:
    return None, None
  n, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS))
  cap.release()
  return (n if n > 0 else None), (fps if fps > 0 else None)


def iter_video(path: str, *, every: int = 1, max_frames: int | None = None) -> Iterator[Frame]:
  """Frames 0, every, 2*every, ... of a video as RGB; an unreadable video yields one error frame."""
  try:
    cv2, cap = _open_video(path)
  except MediaError as e:
    yield Frame(path, 0, None, is_video=True, error=str(e))
    return
  fps = float(cap.get(cv2.CAP_PROP_FPS)) or None
  i, emitted = 0, 0
  try:
    while max_frames is None or emitted < max_frames:
      if i % every == 0:
        ok, bgr = cap.read()
        if not ok:
          break
        yield Frame(path, i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), time=i / fps if fps else None, is_video=True)
        emitted += 1
      elif not cap.grab():
        break
      i += 1
  finally:
    cap.release()
  if emitted == 0:
    yield Frame(
      path, 0, None, is_video=True, error=f"{path}: opened as a video but no frame could be decoded; check the file"
    )


def iter_file(path: str, *, every: int = 1, max_frames: int | None = None, plain: bool = False) -> Iterator[Frame]:
  """The frames of one file: a still image gives one, a video or animated GIF one per ``every`` frames
  (``plain``: still images as :func:`read_image` with ``plain=True``)."""
  if not os.path.exists(path):
    yield Frame(path, 0, None, error=f"{path}: no such file or folder")
    return
  if is_video(path):
    yield from iter_video(path, every=every, max_frames=max_frames)
    return
  if path.lower().endswith(".gif") and _num_gif_frames(path) > 1:
    try:
      yield from _iter_gif(path, every, max_frames)
    except (OSError, ValueError, SyntaxError) as e:
      yield Frame(path, 0, None, is_video=True, error=f"{path}: broken animated GIF ({e})")
    return
  try:
    yield Frame(path, 0, read_image(path, plain=plain))
  except MediaError as e:
    if not path.lower().endswith(IMAGE_EXTS):  # an unknown extension: perhaps a video after all
      frames = list(iter_video(path, every=every, max_frames=1))
      if frames and frames[0].error is None:
        yield from iter_video(path, every=every, max_frames=max_frames)
        return
    yield Frame(path, 0, None, error=str(e))


def iter_media(
  paths: Sequence[str | os.PathLike], *, every: int = 1, max_frames: int | None = None, plain: bool = False
) -> Iterator[Frame]:
  """Frames of every input (files, folders expanded), in order (``plain``: see :func:`read_image`)."""
  for path in expand_inputs(paths):
    yield from iter_file(path, every=every, max_frames=max_frames, plain=plain)


def count_frames(paths: Sequence[str], *, every: int = 1, max_frames: int | None = None) -> int | None:
  """Expected number of frames of ``iter_media`` (for a progress bar); None when a video's length is unknown."""
  total = 0
  for path in paths:
    n = 1
    if is_video(path) or path.lower().endswith(".gif"):
      count, _ = video_info(path)
      if count is None:
        return None
      n = max(1, -(-count // every))
      if max_frames is not None:
        n = min(n, max_frames)
    total += n
  return total


def capture_name(source: str | int) -> str:
  """The ``file`` column of a live source: ``camera:N`` for a device number, else the source as given."""
  return f"camera:{source}" if isinstance(source, int) or str(source).isdigit() else str(source)


def iter_capture(source: str | int, *, every: int = 1, max_frames: int | None = None) -> Iterator[Frame]:
  """Frames of a live OpenCV source (camera number, device path, RTSP/HTTP URL, or a file read as a stream) until
  it ends or ``max_frames``; ``time`` is the stream's timestamp, else seconds since it was opened. Raises
  :class:`megraph_jax.errors.CaptureError` when the source cannot be opened."""
  name = capture_name(source)
  try:
    cv2, cap = _open_video(int(source) if str(source).isdigit() else str(source))
  except MediaError as e:
    raise CaptureError(
      f"{name}: cannot open this capture source (no such camera, unreachable URL, or a format OpenCV cannot read); "
      "check the device number (ls /dev/video*) or the URL"
    ) from e
  t0, i, emitted = time.monotonic(), 0, 0
  try:
    while max_frames is None or emitted < max_frames:
      ok, bgr = cap.read()
      if not ok:
        break
      if i % every == 0:
        ms = float(cap.get(cv2.CAP_PROP_POS_MSEC))
        t = ms / 1000.0 if ms > 0 else time.monotonic() - t0
        yield Frame(name, i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), time=t, is_video=True)
        emitted += 1
      i += 1
  finally:
    cap.release()
