"""AU Studio's work, without the web part: uploads kept under one temporary folder, one job per upload, run in the
background one after another by the CLI's own output code (:func:`megraph_jax.predict.predictor.run_cli`), so the
rows, CSV/JSON files and pictures are the ones ``python -m megraph_jax.predict`` writes for the same files."""

from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import itertools
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from megraph_jax.predict import media, plots
from megraph_jax.predict.predictor import Predictor, cli_writer, run_cli
from megraph_jax.predict.records import FacePrediction

# What the page may set per upload: the CLI option each one is (``predictor.parser()``), with its allowed range.
OPTIONS = {
  "threshold": ("--threshold", float, 0.0, 1.0),
  "every": ("--every", int, 1, 10_000),
  "smooth": ("--smooth", int, 1, 1_000),
  "plot_every": ("--plot-every", int, 1, 100_000),
  "max_frames": ("--max-frames", int, 1, 10_000_000),
}
UNSAFE = re.compile(r"[^\w. -]+")  # characters never kept in a stored file name (separators, controls, quotes, ...)
MAX_DEPTH, MAX_NAME = 8, 120  # folders kept of a browser's relative path; characters kept of each part
# While a video is processed its timeline picture is redrawn every 3 s at most, and drawing takes at most 1/5 of the
# time (a long video's picture takes longer to draw); a video done sooner gets only its final picture.
TIMELINE_EVERY_S, TIMELINE_SHARE = 3.0, 0.2


class OptionError(ValueError):
  """An option from the page that the CLI would not take (the message names it and its range)."""


class JobCancelled(Exception):
  """Raised into a running job's row stream when the person cancels it."""


def safe_name(name: str) -> str:
  """The relative path a browser's file name is stored under: ``/`` or ``\\`` separated parts, each stripped of
  characters other than letters, digits, ``.``, ``-``, ``_`` and spaces and of leading dots; empty, ``.`` and ``..``
  parts dropped (``'../../etc/x.jpg'`` -> ``'etc/x.jpg'``), so it never leaves the folder it is joined to."""
  parts = []
  for part in re.split(r"[\\/]+", name):
    part = UNSAFE.sub("_", part).strip().lstrip(".").strip()[:MAX_NAME]
    if part.strip("_"):
      parts.append(part)
  return "/".join(parts[-MAX_DEPTH:]) or "upload"


def parse_options(form: dict[str, Any], defaults: argparse.Namespace) -> dict[str, Any]:
  """The page's options as CLI values (missing or empty ones: ``defaults``, the app's own command line), checked
  against :data:`OPTIONS`; ``whole_image`` is the CLI's ``--no-align``."""
  out: dict[str, Any] = {}
  for key, (flag, kind, lo, hi) in OPTIONS.items():
    raw = form.get(key)
    if raw is None or str(raw).strip() == "":
      out[key] = getattr(defaults, key)
      continue
    try:
      value = kind(str(raw).strip())
    except ValueError:
      raise OptionError(f"{key} ({flag}): {raw!r} is not a{'n integer' if kind is int else ' number'}") from None
    if not lo <= value <= hi:
      raise OptionError(f"{key} ({flag}): {value} is outside {lo}..{hi}")
    out[key] = value
  whole = str(form.get("whole_image", "")).strip().lower()
  out["no_align"] = whole in ("1", "true", "on", "yes") if whole else bool(defaults.no_align)
  return out


@dataclasses.dataclass
class Job:
  """One upload: its files (stored names, in upload order), the CLI arguments it runs with, and what it produced."""

  id: int
  folder: str  # <studio root>/job-<id>: inputs/, pictures/ (the CLI's --plot), timelines/, predictions.csv|json
  args: argparse.Namespace
  files: list[str] = dataclasses.field(default_factory=list)
  status: str = "queued"  # queued -> running -> done | failed | cancelled
  error: str = ""
  rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  frames_done: int = 0
  frames_total: int | None = None
  started: float | None = None  # when its first frame came out of the model (compilation excluded from frames/s)
  finished: float | None = None
  timelines: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # video -> its picture's geometry
  cancel: threading.Event = dataclasses.field(default_factory=threading.Event)

  @property
  def inputs(self) -> str:
    return os.path.join(self.folder, "inputs")

  @property
  def pictures(self) -> str:
    return os.path.join(self.folder, "pictures")

  def path(self, kind: str) -> str:
    """``predictions.csv``, ``predictions.json`` or ``pictures.zip`` of this job."""
    return os.path.join(self.folder, kind)

  def store(self, name: str, data: BinaryIO) -> str:
    """Copies an uploaded file under ``inputs/`` by its :func:`safe_name` (``_2``, ``_3``, ... when taken); returns
    the stored name (the ``file`` column of its rows)."""
    rel = safe_name(name)
    stem, ext = os.path.splitext(rel)
    i = 1
    while rel in self.files or os.path.lexists(os.path.join(self.inputs, rel)):
      i += 1
      rel = f"{stem}_{i}{ext}"
    dest = os.path.realpath(os.path.join(self.inputs, rel))
    if not dest.startswith(os.path.realpath(self.inputs) + os.sep):  # safe_name makes this impossible; kept as a guard
      raise ValueError(f"refused file name {name!r}")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "wb") as f:
      shutil.copyfileobj(data, f, 1 << 20)
    self.files.append(rel)
    return rel

  def progress(self) -> dict[str, Any]:
    """Frames done of the total (None when a video's length is unknown), frames/s and the seconds left."""
    fps = eta = None
    if self.started is not None and self.frames_done > 1:
      spent = (self.finished or time.monotonic()) - self.started
      fps = (self.frames_done - 1) / spent if spent > 0 else None
    if fps and self.frames_total is not None and self.status == "running":
      eta = max(0.0, (self.frames_total - self.frames_done) / fps)
    return {"done": self.frames_done, "total": self.frames_total, "fps": fps, "eta": eta}

  def summary(self, position: int | None = None) -> dict[str, Any]:
    return {
      "id": self.id,
      "status": self.status,
      "error": self.error,
      "files": self.files,
      "queue_position": position,
      "counts": dict(self.counts),
      "progress": self.progress(),
      "options": {k: getattr(self.args, k) for k in (*OPTIONS, "no_align")},
    }


class Studio:
  """The jobs of one app: a temporary root folder, one :class:`Predictor` (compiled once), a worker thread that runs
  the queued jobs one after another (``Predictor`` holds one compiled model; two jobs at once would only share the
  same cores). Per job the predictor's ``align`` and ``threshold`` are set from its options."""

  def __init__(self, predictor: Predictor, defaults: argparse.Namespace, root: str | None = None):
    self.predictor, self.defaults = predictor, defaults
    self.root = root or tempfile.mkdtemp(prefix="au-studio-")
    self.jobs: dict[int, Job] = {}
    self.lock = threading.Lock()
    self._queue: queue.Queue[Job | None] = queue.Queue()
    self._worker: threading.Thread | None = None
    self._ids = itertools.count(1)  # job numbers, also for uploads still being stored

  # -- jobs

  def new_job(self, options: dict[str, Any]) -> Job:
    """A job (not yet queued) whose arguments are the app's CLI arguments with the page's ``options``."""
    args = copy.copy(self.defaults)
    with self.lock:
      job_id = next(self._ids)
      folder = os.path.join(self.root, f"job-{job_id}")
      os.makedirs(os.path.join(folder, "inputs"))
      job = Job(job_id, folder, args)
    vars(args).update(options)
    vars(args).update(inputs=job.files, plot=job.pictures, output=job.path("predictions.csv"), format="csv")
    args.no_progress = True
    return job

  def submit(self, job: Job) -> None:
    """Queues ``job`` (its files stored); the worker starts on the first one."""
    with self.lock:
      self.jobs[job.id] = job
      if self._worker is None:
        self._worker = threading.Thread(target=self._work, name="au-studio-jobs", daemon=True)
        self._worker.start()
    self._queue.put(job)

  def position(self, job: Job) -> int | None:
    """1 for the next job to run, 2 for the one after it, ...; None unless queued."""
    with self.lock:
      queued = [j.id for j in sorted(self.jobs.values(), key=lambda j: j.id) if j.status == "queued"]
    return queued.index(job.id) + 1 if job.id in queued else None

  def cancel(self, job: Job) -> None:
    job.cancel.set()
    with self.lock:
      if job.status == "queued":
        job.status = "cancelled"

  def close(self) -> None:
    """Stops the worker after the running job's next row, and removes every upload and result."""
    for job in list(self.jobs.values()):
      self.cancel(job)
    self._queue.put(None)
    if self._worker is not None:
      self._worker.join(timeout=30)
    shutil.rmtree(self.root, ignore_errors=True)

  def _work(self) -> None:
    while (job := self._queue.get()) is not None:
      if job.status == "queued":
        self.run(job)

  # -- one job

  def run(self, job: Job) -> None:
    """Runs ``job`` as the CLI would run on its files (rows, pictures), streaming rows into ``job.rows``."""
    args, pr = job.args, self.predictor
    with self.lock:
      job.status = "running"
    pr.align, pr.threshold = not args.no_align, args.threshold
    video: list[FacePrediction] = []  # slim rows of the current video, for its timeline
    drawn = {"at": 0.0, "cost": 0.0}  # when the current video's timeline was last drawn, and how long that took

    def on_row(p: FacePrediction, pictures: list[str]) -> None:
      if video and p.file != video[0].file:
        self._timeline(job, video)
        video.clear()
      row = p.row(pr.au_names, args.threshold)
      row.update(pictures=[os.path.basename(x) for x in pictures], is_video=p.is_video)
      with self.lock:
        job.rows.append(row)
        job.counts[p.status] += 1
      if p.is_video and p.status == "ok":
        if not video:
          drawn.update(at=time.monotonic(), cost=0.0)
        video.append(dataclasses.replace(p, adjacency=None, edge_strength=None, crop=None))
        if time.monotonic() - drawn["at"] > max(TIMELINE_EVERY_S, drawn["cost"] / TIMELINE_SHARE):
          start = time.monotonic()
          self._timeline(job, video)
          drawn.update(at=time.monotonic(), cost=time.monotonic() - start)

    try:
      paths = [os.path.join(job.inputs, f) for f in job.files]
      job.frames_total = media.count_frames(paths, every=args.every, max_frames=args.max_frames)
      rows = self._rows(job, pr.iter_predict(paths, every=args.every, max_frames=args.max_frames), paths)
      csv_path, json_path = job.path("predictions.csv"), job.path("predictions.json")
      with open(csv_path, "w", newline="") as out, open(json_path, "w", newline="") as js:  # newline="": as the CLI
        also = [cli_writer(args, pr, js, "json")]
        run_cli(args, out, pr, collections.Counter(), rows=rows, writers=also, on_row=on_row)
      if video:
        self._timeline(job, video)
      self._zip(job)
      status = "done"
    except JobCancelled:
      status = "cancelled"
    except Exception as e:  # pylint: disable=broad-except  # shown on the page; the next job still runs
      traceback.print_exc(file=sys.stderr)
      job.error, status = f"{type(e).__name__}: {e}", "failed"
    with self.lock:
      job.status, job.finished = status, time.monotonic()

  def _rows(self, job: Job, rows: Iterable[FacePrediction], paths: list[str]) -> Iterator[FacePrediction]:
    """``rows`` with the stored names as ``file`` and in messages (as the CLI run in ``inputs/`` on those names
    writes them), frames counted, stopped when the job is cancelled."""
    names, last, folder = dict(zip(paths, job.files)), None, job.inputs + os.sep
    for p in rows:
      if job.cancel.is_set():
        raise JobCancelled()
      p.file, p.message = names.get(p.file, p.file), p.message.replace(folder, "")
      if (p.file, p.frame) != last:
        last = (p.file, p.frame)
        job.started = job.started or time.monotonic()
        job.frames_done += 1
      yield p

  def _timeline(self, job: Job, video: list[FacePrediction]) -> None:
    """Draws the AU-over-time picture of one video (``plots.timeline_figure``, the CLI's) under ``timelines/``, with
    where its plotting area lies in the picture, so that the page can mark the current frame on it."""
    fig = plots.timeline_figure(video, self.predictor.au_names, threshold=job.args.threshold)
    if fig is None:
      return
    file = video[0].file
    old = job.timelines.get(file) or {"index": len(job.timelines), "version": 0}
    entry = {"index": old["index"], "version": old["version"] + 1}  # a new dict: the page never sees a half-made one
    path = os.path.join(job.folder, "timelines", f"{entry['index']}.png")
    os.replace(plots.save(fig, path + ".part.png"), path)  # the page never reads a half-written picture
    top, bottom = fig.axes[0].get_position(), fig.axes[-1].get_position()  # figure fractions, after the layout
    lo, hi = fig.axes[-1].get_xlim()
    has_time = all(p.time is not None for p in video)
    entry.update(
      file=file,
      x0=top.x0,
      x1=top.x1,
      top=1 - top.y1,
      bottom=1 - bottom.y0,
      xmin=lo,
      xmax=hi,
      unit="time" if has_time else "frame",
      frames=sorted({p.frame: p.time if has_time else p.frame for p in video}.items()),  # [frame, x] per frame
    )
    with self.lock:
      job.timelines[file] = entry

  def _zip(self, job: Job) -> None:
    """``pictures.zip``: the CLI's ``--plot`` folder, its files under ``pictures/``."""
    with zipfile.ZipFile(job.path("pictures.zip"), "w", zipfile.ZIP_STORED) as z:
      if os.path.isdir(job.pictures):
        for name in sorted(os.listdir(job.pictures)):
          z.write(os.path.join(job.pictures, name), f"pictures/{name}")

  def updates(self, job: Job, since: int = 0) -> dict[str, Any]:
    """What the page polls: the job's summary, rows from ``since`` on, its timelines."""
    position = self.position(job)
    with self.lock:
      return {
        **job.summary(position),
        "since": since,
        "rows": job.rows[since:],
        "timelines": list(job.timelines.values()),
      }
