"""Prediction output: one :class:`FacePrediction` per face (or per unreadable file / faceless frame), its CSV row
and JSON record, writers for both, the output file a failed run leaves alone, and the moving average of video
probabilities."""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
import re
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np


@dataclasses.dataclass
class FacePrediction:
  """One output row: a face of a frame, or a frame without a face / an unreadable file (``status``)."""

  file: str
  frame: int = 0
  time: float | None = None  # seconds into a video
  face: int | None = None  # face number in the image (largest first); a track id along a video (rows in id order)
  status: str = "ok"  # "ok", "no_face" or "error"
  message: str = ""
  box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in frame pixels
  score: float | None = None  # detection confidence (None with --no-align)
  probs: np.ndarray | None = None  # [N] AU probabilities
  adjacency: np.ndarray | None = None  # [N, N] kNN links of the node features (a_ij = 1: j near i); None: baseline
  edge_strength: np.ndarray | None = None  # [N, N] P(AU i and AU j both occur) from edge e_ij (stage 2)
  crop: np.ndarray | None = None  # the aligned face, uint8 [S, S, 3]
  is_video: bool = False

  def row(self, au_names: Sequence[str], threshold: float = 0.5) -> dict[str, Any]:
    """The flat CSV row (AU probabilities as ``AU1_prob``, occurrence 0/1 as ``AU1_occ``)."""
    out: dict[str, Any] = {
      "file": self.file,
      "frame": self.frame,
      "time": "" if self.time is None else round(self.time, 4),
      "face": "" if self.face is None else self.face,
      "status": self.status,
      "message": self.message,
    }
    for k, v in zip(("x0", "y0", "x1", "y1"), self.box or ("",) * 4):
      out[k] = v if v == "" else round(float(v), 1)
    out["score"] = "" if self.score is None else round(self.score, 4)
    for i, name in enumerate(au_names):
      out[f"{name}_prob"] = "" if self.probs is None else round(float(self.probs[i]), 4)
    for i, name in enumerate(au_names):
      out[f"{name}_occ"] = "" if self.probs is None else int(self.probs[i] >= threshold)
    return out


def csv_fields(au_names: Sequence[str]) -> list[str]:
  """Column names of :meth:`FacePrediction.row`."""
  return (
    ["file", "frame", "time", "face", "status", "message", "x0", "y0", "x1", "y1", "score"]
    + [f"{a}_prob" for a in au_names]
    + [f"{a}_occ" for a in au_names]
  )


def json_record(p: FacePrediction, au_names: Sequence[str], threshold: float = 0.5) -> dict[str, Any]:
  """A prediction as JSON: box as a list, ``probs`` and ``occurrence`` keyed by AU name."""
  rec = {
    "file": p.file,
    "frame": p.frame,
    "time": p.time,
    "face": p.face,
    "status": p.status,
    "message": p.message,
    "box": None if p.box is None else [round(float(v), 1) for v in p.box],
    "score": p.score,
  }
  if p.probs is not None:
    rec["probs"] = {a: round(float(v), 4) for a, v in zip(au_names, p.probs)}
    rec["occurrence"] = {a: int(v >= threshold) for a, v in zip(au_names, p.probs)}
  return rec


class RecordWriter:
  """Streams predictions to ``out`` as they come, flushed row by row: CSV rows, or one JSON document whose
  ``predictions`` list grows record by record (closed by :meth:`close`; a crash leaves the records before it)."""

  def __init__(
    self,
    out: TextIO,
    fmt: str,
    au_names: Sequence[str],
    *,
    threshold: float = 0.5,
    header: dict[str, Any] | None = None,
  ):
    if fmt not in ("csv", "json"):
      raise ValueError(f"format {fmt!r}; choose 'csv' or 'json'")
    self.out, self.au_names, self.threshold, self.count = out, list(au_names), threshold, 0
    self.csv = csv.DictWriter(out, fieldnames=csv_fields(self.au_names)) if fmt == "csv" else None
    if self.csv:
      self.csv.writeheader()
    else:
      head = {**(header or {}), "au_names": self.au_names, "threshold": threshold}
      out.write(json.dumps(head, indent=1)[:-2] + ',\n "predictions": [')
    out.flush()

  def write(self, p: FacePrediction) -> None:
    if self.csv:
      self.csv.writerow(p.row(self.au_names, self.threshold))
    else:
      self.out.write(("," if self.count else "") + "\n  " + json.dumps(json_record(p, self.au_names, self.threshold)))
    self.count += 1
    self.out.flush()

  def close(self) -> None:
    if not self.csv:
      self.out.write("\n ]\n}\n")
    self.out.flush()


class StagedOutput:
  """An output file that a failed run never touches: rows stream into ``.NAME.<pid>.partial`` beside ``path``
  (flushed row by row by :class:`RecordWriter`, so a killed run leaves them there), and :meth:`commit` renames that
  onto ``path`` (``os.replace``: atomic; an earlier file of that name stays whole until then). :meth:`keep_partial`
  ends a failed or interrupted run: the rows written so far move to ``NAME.partial``, ``path`` left as it was."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(self.path)
    self.temp = os.path.join(folder, f".{name}.{os.getpid()}.partial")
    self.partial = self.path + ".partial"
    self.file: TextIO | None = None

  def open(self) -> TextIO:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self.file = open(self.temp, "w", newline="")  # noqa: SIM115  (closed by commit / keep_partial)
    return self.file

  def _close(self) -> None:
    if self.file is not None and not self.file.closed:
      self.file.close()

  def commit(self) -> str:
    """Moves the finished file onto ``path``; returns ``path``."""
    self._close()
    os.replace(self.temp, self.path)
    return self.path

  def keep_partial(self, rows: int) -> str | None:
    """After a failed or interrupted run: ``NAME.partial`` holding the ``rows`` written so far (returned), or, with
    none, nothing left behind (None)."""
    self._close()
    if not os.path.exists(self.temp):
      return None
    if rows:
      os.replace(self.temp, self.partial)
      return self.partial
    os.remove(self.temp)
    return None


class Smoother:
  """Streaming centred moving average of video probabilities over ``window`` rows of each face track.

  Feed rows in output order (:meth:`push`), take the finished ones in the same order (returned by ``push`` and
  :meth:`finish`). A row is finished once its track has ``window // 2`` rows after it, or the track is gone for
  more than ``window`` frames (a gap ends its segment: averages never reach across it), or the video ended; so
  at most about ``window`` frames are held, whatever the video length.
  """

  def __init__(self, window: int):
    self.window, self.half = int(window), int(window) // 2
    self.rows: collections.deque[FacePrediction] = collections.deque()  # pushed, not yet given out
    self.held: set[int] = set()  # id() of rows whose smoothed value is not final yet
    self.tracks: dict[Any, dict[str, Any]] = {}  # track -> segment: raw probs, rows, next to finish, last frame
    self.file, self.frame, self.ordinal = None, None, -1

  def push(self, p: FacePrediction) -> list[FacePrediction]:
    if self.window <= 1:
      return [p]
    if p.file != self.file:
      self._close_all()
      self.file, self.frame, self.ordinal = p.file, None, -1
    if p.frame != self.frame:
      self.frame, self.ordinal = p.frame, self.ordinal + 1
      for key in [k for k, t in self.tracks.items() if self.ordinal - t["last"] > self.window]:
        self._close(key)
    self.rows.append(p)
    if p.status == "ok" and p.is_video:
      seg = self.tracks.setdefault(p.face, {"raw": [], "rows": [], "next": 0, "start": 0, "last": 0})
      seg["raw"].append(np.asarray(p.probs, np.float32))
      seg["rows"].append(p)
      seg["last"] = self.ordinal
      self.held.add(id(p))
      self._advance(seg, final=False)
    return self._release()

  def finish(self) -> list[FacePrediction]:
    """The rows still held (the end of the stream)."""
    self._close_all()
    return self._release()

  def _advance(self, seg: dict[str, Any], final: bool) -> None:
    raw, rows = seg["raw"], seg["rows"]
    while seg["next"] < len(rows) and (final or len(rows) - 1 - seg["next"] >= self.window - 1 - self.half):
      j = seg["next"]
      lo, hi = max(0, j - self.half), j + (self.window - 1 - self.half) + 1
      rows[j].probs = np.mean(raw[lo:hi], axis=0).astype(np.float32)
      self.held.discard(id(rows[j]))
      seg["next"] += 1
      drop = max(0, seg["next"] - self.half)  # raw values no later row needs
      del raw[:drop], rows[:drop]
      seg["next"] -= drop

  def _close(self, key: Any) -> None:
    self._advance(self.tracks.pop(key), final=True)

  def _close_all(self) -> None:
    for key in list(self.tracks):
      self._close(key)

  def _release(self) -> list[FacePrediction]:
    out = []
    while self.rows and id(self.rows[0]) not in self.held:
      out.append(self.rows.popleft())
    return out


def smooth(preds: Sequence[FacePrediction], window: int) -> list[FacePrediction]:
  """Centred moving average of the AU probabilities over ``window`` rows, per video and face track (:class:`Smoother`
  on a whole list)."""
  sm = Smoother(window)
  out = [q for p in preds for q in sm.push(p)]
  return out + sm.finish()


def file_stem(path: str) -> str:
  """A file-name-safe stem of ``path``'s base name."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0]) or "image"


def plot_stem(p: FacePrediction, stem: str | None = None) -> str:
  """File-name stem of a face's pictures: ``<file stem>[_f<frame>]_face<k>``."""
  return (stem or file_stem(p.file)) + (f"_f{p.frame:06d}" if p.is_video else "") + f"_face{p.face}"


def unique_stem(path: str, stems: dict[str, str]) -> str:
  """``file_stem(path)``, suffixed ``_2``, ``_3``, ... when another input file already has it."""
  if path not in stems:
    base, taken, i = file_stem(path), set(stems.values()), 1
    stem = base
    while stem in taken:
      i += 1
      stem = f"{base}_{i}"
    stems[path] = stem
  return stems[path]
