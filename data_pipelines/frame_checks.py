"""Checks on the frames the aligner reads: an image file or a decoded frame gives RGB uint8 or a named issue,
and the log of every skipped or repaired input (``align_report.json``)."""

from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np

from megraph_jax.predict import media

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


# ------------------------------------------------------------------------------------------------
# Loading with checks.


def load_image(path: str, min_side: int = 32) -> tuple[np.ndarray | None, str | None, str]:
  """Reads an image as RGB uint8 (``megraph_jax.predict.media``); returns ``(image or None, issue kind or None,
  detail)``.

  Corrupt, truncated and tiny images give ``None`` with their issue; grayscale ones are converted
  (issue ``grayscale_image``). Nothing is raised for a bad file.
  """
  if not os.path.isfile(path):
    return None, "missing_frame", f"{path} does not exist"
  try:
    rgb, mode = media.read_image_and_mode(path)
  except media.MediaError as e:
    return None, "corrupt_image", str(e)
  h, w = rgb.shape[:2]
  if min(w, h) < min_side:
    return None, "tiny_image", f"{path} is {w}x{h} px, smaller than the minimum side {min_side} px"
  issue = "grayscale_image" if mode in ("1", "L", "LA", "I", "I;16", "F") else None
  return rgb, issue, (f"{path} has mode {mode}" if issue else "")


def check_array(image: np.ndarray, min_side: int) -> tuple[np.ndarray | None, str | None, str]:
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
    return {
      "counts": self.counts(),
      "items": {k: [list(t) for t in v[:max_items]] for k, v in sorted(self.items.items())},
    }
