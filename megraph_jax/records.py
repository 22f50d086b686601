"""Prediction output: one :class:`FacePrediction` per face (or per unreadable file / faceless frame), its CSV row
and JSON record, writers for both, and the moving average of video probabilities."""

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
  face: int | None = None  # face number in the image (largest first); a track id along a video
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
  """Streams predictions to ``out`` as CSV rows (written as they come) or one JSON document (at :meth:`close`)."""

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
    self.out, self.au_names, self.threshold, self.header = out, list(au_names), threshold, header or {}
    self.records: list[dict[str, Any]] = []
    self.csv = csv.DictWriter(out, fieldnames=csv_fields(self.au_names)) if fmt == "csv" else None
    if self.csv:
      self.csv.writeheader()

  def write(self, p: FacePrediction) -> None:
    if self.csv:
      self.csv.writerow(p.row(self.au_names, self.threshold))
    else:
      self.records.append(json_record(p, self.au_names, self.threshold))

  def close(self) -> None:
    if not self.csv:
      json.dump(
        {**self.header, "au_names": self.au_names, "threshold": self.threshold, "predictions": self.records},
        self.out,
        indent=1,
      )
      self.out.write("\n")
    self.out.flush()


def smooth(preds: Sequence[FacePrediction], window: int) -> list[FacePrediction]:
  """Centred moving average of the AU probabilities over ``window`` frames, per video and face track."""
  if window <= 1:
    return list(preds)
  tracks: dict[tuple[str, int | None], list[FacePrediction]] = collections.defaultdict(list)
  for p in preds:
    if p.status == "ok" and p.is_video:
      tracks[(p.file, p.face)].append(p)
  kernel = np.ones(window, np.float32)
  for track in tracks.values():
    probs = np.stack([p.probs for p in track])  # [T, N]
    pad = window // 2
    num = np.stack([np.convolve(np.pad(c, (pad, window - 1 - pad)), kernel, "valid") for c in probs.T], 1)
    den = np.convolve(np.pad(np.ones(len(track), np.float32), (pad, window - 1 - pad)), kernel, "valid")
    for p, v in zip(track, num / den[:, None]):
      p.probs = v.astype(np.float32)
  return list(preds)


def file_stem(path: str) -> str:
  """A file-name-safe stem of ``path``'s base name."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0]) or "image"


def plot_stem(p: FacePrediction, stem: str | None = None) -> str:
  """File-name stem of a face's pictures: ``<file stem>[_f<frame>]_face<k>``."""
  return (stem or file_stem(p.file)) + (f"_f{p.frame:06d}" if p.is_video else "") + f"_face{p.face}"
