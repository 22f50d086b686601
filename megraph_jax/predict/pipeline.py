"""Prediction as a pipeline of stages: decode -> find faces (detect or track, align) -> model -> rows.

Each stage is an iterator; :class:`Prefetch` runs one in a thread with a bounded queue, so decoding (OpenCV),
detection (MTCNN) and the model (XLA) overlap and use all cores while memory stays bounded by the
queue sizes, whatever the video length. Detection, tracking, alignment (one batched similarity warp per chunk of
frames, :func:`megraph_jax.predict.warp.align_faces`) and the model run on the JAX device; decoding, the eval
transform and the rows on the host. Nothing is accumulated: a frame's rows leave the model stage as soon as
its faces are predicted. With ``threads=False`` the same stages run one after another in the caller's thread.

Detection policy along a video (:class:`FaceFinder`), ``redetect`` = K:
  * full MTCNN on the first frame and on every K-th frame (batched across the keyframes that are ready);
  * on the frames between, only MTCNN's last network (ONet) re-fits each tracked face from its previous box (one
    device call along the chunk's frames up to the next keyframe, :meth:`megraph_jax.predict.faces.Detector.track`);
    the frame is accepted when every face keeps ONet's score >= 0.8, its centre moved at most 20% of its box
    side and its size changed by at most 25%; otherwise the frame gets a full detection (so a fast or lost face
    never drifts). A face entering the scene is found at the next keyframe (at most K - 1 frames late).
  * while no face is tracked (an empty scene, or all faces lost), every frame gets a full detection, batched
    across the frames that are ready, so a face appearing there is found at once;
  * ``redetect=1`` is full detection on every frame (the reference path the tests compare with).
Track ids (:class:`megraph_jax.predict.faces.FaceTracker`) are assigned in frame order in this single stage.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from megraph_jax.predict import faces as facelib
from megraph_jax.predict import media, warp
from megraph_jax.predict.records import FacePrediction

MOVE_LIMIT = 0.2  # a tracked face's centre may move this fraction of its box side per frame ...
SCALE_LIMIT = 1.25  # ... and its side change by this factor, else the frame gets a full detection


class StageTimes:
  """Busy seconds per stage (thread-safe), for the benchmark's per-stage table."""

  def __init__(self):
    self.seconds: collections.Counter[str] = collections.Counter()
    self._lock = threading.Lock()

  @contextlib.contextmanager
  def __call__(self, stage: str):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      with self._lock:
        self.seconds[stage] += time.perf_counter() - t0


_END = object()


class _Raised:
  def __init__(self, error: BaseException):
    self.error = error


class Prefetch(Iterator):
  """Runs ``source`` in a daemon thread, at most ``maxsize`` items ahead; its exception is re-raised in order."""

  def __init__(self, source: Iterable, maxsize: int, name: str = "stage"):
    self._q: queue.Queue = queue.Queue(maxsize)
    self._stop = threading.Event()
    self._done = False
    self._thread = threading.Thread(target=self._run, args=(iter(source),), name=name, daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._q.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def _run(self, it: Iterator) -> None:
    try:
      for item in it:
        if not self._put(item):
          return
      self._put(_END)
    except BaseException as e:  # pylint: disable=broad-except  # handed to the consumer, raised there
      self._put(_Raised(e))
    finally:
      close = getattr(it, "close", None)
      if close:
        close()

  def ready(self) -> bool:
    """Whether the next item is already waiting (taking it will not block)."""
    return not self._q.empty()

  def __next__(self):
    if self._done:
      raise StopIteration
    item = self._q.get()
    if item is _END:
      self._done = True
      raise StopIteration
    if isinstance(item, _Raised):
      self._done = True
      raise item.error
    return item

  def close(self) -> None:
    """Stops the thread (the consumer went away early)."""
    self._stop.set()
    self._done = True
    while self._thread.is_alive():
      with contextlib.suppress(queue.Empty):
        self._q.get(timeout=0.05)


def chunks(items: Iterator, size: int) -> Iterator[list]:
  """Lists of up to ``size`` items: the next one, plus those a :class:`Prefetch` already holds (never waits)."""
  ready = getattr(items, "ready", lambda: False)
  for first in items:
    chunk = [first]
    while len(chunk) < size and ready():
      try:
        chunk.append(next(items))
      except StopIteration:
        break
      except Exception:  # the items before a failure still go out, then it is raised
        yield chunk
        raise
    yield chunk


def timed(frames: Iterator[media.Frame], times: StageTimes, stage: str) -> Iterator[media.Frame]:
  """``frames`` unchanged, the time spent producing each one added to ``stage``."""
  while True:
    with times(stage):
      fr = next(frames, None)
    if fr is None:
      return
    yield fr


def with_progress(rows: Iterator[FacePrediction], total: int | None) -> Iterator[FacePrediction]:
  """``rows`` unchanged, with a progress bar of frames (frames/s, and the ETA when the length is known) on stderr."""

  bar = tqdm(total=total, unit="frame", desc="predict", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
  last = None
  try:
    for p in rows:
      if (p.file, p.frame) != last:
        last = (p.file, p.frame)
        bar.update(1)
      yield p
  finally:
    bar.close()


# (the frame's rows, float32 model inputs [k, S, S, 3] of its k faces with status "ok")
FrameFaces = tuple[list[FacePrediction], np.ndarray]


class FaceFinder:
  """Frames -> rows with aligned crops, boxes, scores and track ids, plus the faces' model inputs (module doc)."""

  def __init__(
    self,
    transform: Callable[[np.ndarray], np.ndarray],
    *,
    detector: Callable[[], facelib.Detector] | None,
    aligner: facelib.Aligner | None = None,
    redetect: int = 30,
    batch: int = 8,
    times: StageTimes | None = None,
    workers: int | None = None,
  ):
    self.transform, self._make_detector, self.aligner = transform, detector, aligner
    self.workers = max(1, int(workers or min(8, os.cpu_count() or 1)))  # threads aligning and transforming faces
    self.redetect, self.batch = max(1, int(redetect)), max(1, int(batch))
    self.times = times or StageTimes()
    self.detector: facelib.Detector | None = None
    self.tracker = facelib.FaceTracker()
    self._file, self._ordinal, self._tracked = None, 0, []  # current video, frames seen in it, last faces
    self._run: list[np.ndarray] = []  # images of the current frame and the non-keyframes after it in its chunk
    self._ahead: list[list[facelib.Face]] = []  # their faces refitted along the run, from the faces _ahead_from
    self._ahead_from: list[facelib.Face] | None = None

  def __call__(self, frames: Iterator[media.Frame]) -> Iterator[FrameFaces]:
    with concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="align") as pool:
      for chunk in chunks(frames, self.batch):
        keyframes = self._keyframes(chunk)
        self._ahead, found = [], []
        for i, (fr, kf) in enumerate(zip(chunk, keyframes)):  # in frame order: detection, tracking, track ids
          self._run = [f.image for f in self._between(chunk[i:], keyframes[i:])]
          found.append(self._start(fr, kf))
        jobs = self._align(chunk, found)  # the chunk's faces aligned on the device, batched
        prepared = iter(
          pool.map(self._prepare, jobs) if self.workers > 1 and len(jobs) > 1 else map(self._prepare, jobs)
        )
        for fr, (rows, faces) in zip(chunk, found):  # the eval transform of the chunk's faces on all cores
          yield self._finish(fr, rows, [(i, next(prepared)) for i, _ in faces])

  def _align(self, chunk: list[media.Frame], found: list[tuple]) -> list[facelib.AlignedFace | Exception]:
    """The faces of a chunk's frames, in order, aligned (:class:`megraph_jax.predict.faces.Face`: one
    :func:`megraph_jax.predict.warp.align_faces` call per frame size, frames and faces padded to the batch size), or
    the error that aligning one raised."""
    out: list = [face for _, faces in found for _, face in faces]
    groups: dict[tuple, list[tuple[int, int, np.ndarray]]] = collections.defaultdict(list)  # shape -> faces
    k = 0
    for j, (fr, (_, faces)) in enumerate(zip(chunk, found)):
      for _, face in faces:
        if isinstance(face, facelib.Face):
          try:
            groups[fr.image.shape].append((k, j, facelib.alignment(face.landmarks)))
          except Exception as e:  # pylint: disable=broad-except  # the frame's row says so
            out[k] = e
        k += 1
    with self.times("align"):
      for todo in groups.values():
        frames = sorted({j for _, j, _ in todo})
        slot = {j: i for i, j in enumerate(frames)}
        try:
          crops = warp.align_faces(
            [chunk[j].image for j in frames],
            [slot[j] for _, j, _ in todo],
            [m for _, _, m in todo],
            facelib.ALIGN_SIZE,
            frames_to=self.batch,
            faces_to=self.batch,
          )
        except Exception as e:  # pylint: disable=broad-except  # the rows of these frames say so
          crops = [e] * len(todo)
        for (k, _, _), crop in zip(todo, crops):
          out[k] = crop if isinstance(crop, Exception) else facelib.aligned_as(out[k], crop)
    return out

  @staticmethod
  def _between(chunk: list[media.Frame], keyframes: list) -> list[media.Frame]:
    """The frames from the first of ``chunk`` on that are not keyframes (same video, readable, same size): the
    frames that tracking may cover in one batched refit."""
    run = []
    for fr, found in zip(chunk, keyframes):
      if found is not None or fr.image is None or not fr.is_video or fr.file != chunk[0].file:
        break
      if run and fr.image.shape != run[0].image.shape:
        break
      run.append(fr)
    return run

  def _is_keyframe(self, fr: media.Frame, ordinal: int) -> bool:
    return not fr.is_video or ordinal % self.redetect == 0

  def _keyframes(self, chunk: list[media.Frame]) -> list[list[facelib.Face] | None]:
    """Full detections of the chunk's keyframes (batched by image size); None for the frames in between."""
    out: list[list[facelib.Face] | None] = [None] * len(chunk)
    if self._make_detector is None or self.aligner is not None:
      return out
    file, ordinal, groups = self._file, self._ordinal, collections.defaultdict(list)
    searching = not self._tracked and chunk[0].file == self._file  # no face in the last frame: detect on every one
    for i, fr in enumerate(chunk):
      ordinal = ordinal + 1 if fr.file == file else 0
      searching = searching and fr.file == file
      file = fr.file
      if fr.image is not None and (searching or self._is_keyframe(fr, ordinal)):
        groups[fr.image.shape].append(i)
    for idx in groups.values():
      found = self._detect([chunk[i].image for i in idx])
      for i, f in zip(idx, found):
        out[i] = f
    return out

  def _detect(self, images: list[np.ndarray]) -> list[list[facelib.Face]]:
    if self.detector is None:
      self.detector = self._make_detector()
    with self.times("detect"):
      return self.detector.detect_many(images)

  def _track(self, image: np.ndarray) -> list[facelib.Face] | None:
    """The tracked faces re-fitted by ONet, or None when one of them moved too much or was lost. The refit runs
    once along the frames up to the next keyframe (:meth:`megraph_jax.predict.faces.Detector.track`, one device
    call); a frame uses its share while the frames before it were accepted, else the run is refitted again from
    this frame on."""
    if not (self._ahead and self._ahead_from is self._tracked):
      with self.times("track"):
        self._ahead = self.detector.track(self._run or [image], [f.box for f in self._tracked])
    new = self._ahead.pop(0)
    for old, f in zip(self._tracked, new):
      side_old, side = np.sqrt(max(old.area, 1.0)), np.sqrt(max(f.area, 1.0))
      moved = np.hypot(*((f.box[:2] + f.box[2:]) / 2 - (old.box[:2] + old.box[2:]) / 2)) / side_old
      if (
        f.score < facelib.ONET_THRESHOLD or moved > MOVE_LIMIT or not 1 / SCALE_LIMIT <= side / side_old <= SCALE_LIMIT
      ):
        return None
    boxes = [f.box for f in new]
    if any(facelib.iou(a, b) > 0.5 for i, a in enumerate(boxes) for b in boxes[i + 1 :]):
      return None  # two tracks collapsed onto one face
    self._ahead_from = sorted(new, key=lambda f: -f.area)  # becomes self._tracked: the next frame's share stays valid
    return self._ahead_from

  def _faces(self, fr: media.Frame, found: list[facelib.Face] | None) -> list[facelib.Face | facelib.AlignedFace]:
    """The frame's faces: detected or tracked (aligned later, :meth:`_prepare`), or aligned already (a user's
    aligner, the whole image)."""
    if self._make_detector is None:
      return facelib.whole_image(fr.image)
    if self.aligner is not None:  # a user-supplied aligner: called on every frame
      with self.times("detect"):
        return self.aligner(fr.image)
    if found is None and self._tracked:
      found = self._track(fr.image)
    if found is None:
      found = self._detect([fr.image])[0]
    if not fr.is_video:  # a still: the detector's extra passes (faces.STILL_PASSES)
      with self.times("detect"):
        found = self.detector.still(fr.image, found)
    self._tracked = found
    return found

  def _start(self, fr: media.Frame, found: list[facelib.Face] | None) -> tuple[list[FacePrediction] | None, list]:
    """(the frame's only row when it has no face to predict, else None; its faces as (face id, face) in row
    order)."""
    self._ordinal = self._ordinal + 1 if fr.file == self._file else 0
    if fr.file != self._file:
      self._file, self._tracked = fr.file, []
    base = dict(file=fr.file, frame=fr.index, time=fr.time, is_video=fr.is_video)
    if fr.image is None:
      return [FacePrediction(**base, status="error", message=fr.error or "unreadable")], []
    try:
      found = self._faces(fr, found)
    except ImportError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # a detector failure on one frame is not fatal
      self._tracked = []
      return [FacePrediction(**base, status="error", message=f"face detection failed: {type(e).__name__}: {e}")], []
    if not found:
      return [FacePrediction(**base, status="no_face", message="no face found")], []
    boxes = [tuple(float(v) for v in (f.box if isinstance(f, facelib.Face) else f[1])) for f in found]
    ids = self.tracker.assign(fr.file, boxes) if fr.is_video else range(len(found))
    if fr.is_video:  # a video's faces in track order: stable when two faces are about the same size
      return None, sorted(zip(ids, found), key=lambda t: t[0])
    return None, list(zip(ids, found))

  def _prepare(self, face: facelib.AlignedFace | Exception) -> tuple | Exception:
    """(aligned face, model input) of one face, or the error that aligning or transforming it raised (run in the
    worker threads)."""
    if isinstance(face, Exception):
      return face
    try:
      with self.times("transform"):
        return face, self.transform(face[0])
    except Exception as e:  # pylint: disable=broad-except  # the frame's row says so
      return e

  def _finish(self, fr: media.Frame, rows: list[FacePrediction] | None, prepared: list[tuple]) -> FrameFaces:
    empty = np.zeros((0, 1, 1, 3), np.float32)
    if rows is not None:
      return rows, empty
    base = dict(file=fr.file, frame=fr.index, time=fr.time, is_video=fr.is_video)
    failed = [p for _, p in prepared if isinstance(p, Exception)]
    if failed:
      e = failed[0]
      return [FacePrediction(**base, status="error", message=f"face detection failed: {type(e).__name__}: {e}")], empty
    rows = [FacePrediction(**base, face=i, box=box, score=score, crop=crop) for i, ((crop, box, score), _) in prepared]
    return rows, np.stack([x for _, (_, x) in prepared])


def predict_rows(
  items: Iterator[FrameFaces],
  run: Callable[[np.ndarray], dict[str, np.ndarray]],
  batch_size: int,
  *,
  live: bool = False,
) -> Iterator[FacePrediction]:
  """Rows in frame order with the model's outputs; ``run`` takes exactly ``batch_size`` inputs (padded here).

  Faces are batched across frames; a batch runs when full, when the input ends or fails (the rows before a failure
  still come out, then the error is raised), and with ``live`` also when no next frame is waiting.
  """
  frames: collections.deque[list[FacePrediction]] = collections.deque()  # rows not yet given out, in order
  waiting: list[tuple[FacePrediction, np.ndarray]] = []  # faces not yet predicted
  ready = getattr(items, "ready", lambda: True)

  def run_batch(n: int) -> None:
    part, waiting[:] = waiting[:n], waiting[n:]
    x = np.stack([xi for _, xi in part])
    if len(x) < batch_size:
      x = np.concatenate([x, np.zeros((batch_size - len(x), *x.shape[1:]), x.dtype)])
    out = run(x)
    for j, (p, _) in enumerate(part):
      p.probs = out["probs"][j]
      p.adjacency = out["adjacency"][j] if "adjacency" in out else None
      p.edge_strength = out["edge_strength"][j] if "edge_strength" in out else None

  def done() -> Iterator[FacePrediction]:
    while frames and all(p.probs is not None for p in frames[0] if p.status == "ok"):
      yield from frames.popleft()

  def flush() -> Iterator[FacePrediction]:
    while waiting:
      run_batch(batch_size)
    yield from done()

  try:
    for rows, x in items:
      frames.append(rows)
      waiting.extend(zip([p for p in rows if p.status == "ok"], x))
      while len(waiting) >= batch_size or (waiting and live and not ready()):
        run_batch(batch_size)
      yield from done()
  except GeneratorExit:
    raise
  except BaseException:  # an error upstream: predict what was found, give those rows out, then raise
    yield from flush()
    raise
  yield from flush()
