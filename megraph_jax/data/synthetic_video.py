"""Synthetic test videos: procedural faces (``synthetic_faces``) drifting slowly over a static scene, written with
OpenCV. Used by the prediction tests and ``benchmarks/predict_video.py``; no real data, no network."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from megraph_jax import optional
from megraph_jax.data.synthetic_faces import ALL_AUS, render_face, sample_identity


def frames(
  num_frames: int, *, width: int = 640, height: int = 360, faces: int = 1, face_size: int = 150, seed: int = 0
) -> Iterator[np.ndarray]:
  """RGB uint8 frames ``[height, width, 3]``: ``faces`` faces side by side (left to right, the first one largest),
  each drifting on a slow ellipse (at most ~1.5 px per frame) with AU intensities varying smoothly."""
  rng = np.random.default_rng(seed)
  idents = [sample_identity(rng) for _ in range(faces)]
  sizes = [int(face_size * (1.0 - 0.08 * k)) for k in range(faces)]
  yy, xx = np.mgrid[0:height, 0:width]
  scene = np.stack([60 + 80 * xx / width, 70 + 60 * yy / height, 90 + 0 * xx], -1)
  scene = np.clip(scene + rng.normal(0, 4, scene.shape), 0, 255).astype(np.uint8)
  phases = rng.uniform(0, 2 * np.pi, (faces, len(ALL_AUS)))
  for t in range(num_frames):
    frame = scene.copy()
    for k, (ident, s) in enumerate(zip(idents, sizes)):
      au = 0.5 * np.clip(np.sin(2 * np.pi * t / 48.0 + phases[k]), 0.0, 1.0)  # [15] intensities, mild: 0..0.5
      face = render_face(ident, au, np.random.default_rng((seed, k, t)), s)
      cx = width * (k + 0.5) / faces + 20 * np.cos(2 * np.pi * t / 90.0 + k)
      cy = height / 2 + 12 * np.sin(2 * np.pi * t / 90.0 + k)
      x0 = int(np.clip(round(cx - s / 2), 0, width - s))
      y0 = int(np.clip(round(cy - s / 2), 0, height - s))
      frame[y0 : y0 + s, x0 : x0 + s] = face
    yield frame


def write(path: str | os.PathLike, num_frames: int, *, fps: float = 25.0, **kw) -> str:
  """Writes :func:`frames` as an mp4 (OpenCV's ``mp4v``); returns the path."""
  cv2 = optional.require("cv2")
  path = os.fspath(path)
  out = None
  for f in frames(num_frames, **kw):
    if out is None:
      out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (f.shape[1], f.shape[0]))
    out.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
  if out is not None:
    out.release()
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    raise RuntimeError(f"{path}: OpenCV wrote no video (its FFmpeg lacks the mp4v encoder?)")
  return path
