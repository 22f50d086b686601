"""DISFA as a TFDS dataset built from the raw release: left-camera frames, MTCNN-aligned, 8 AUs, 3 folds.

Build: ``python -m data_pipelines.build disfa --manual_dir=/path/to/DISFA``. Load fold ``k``:
``tfds.load("disfa", split=disfa.tfds_split(k, "train"))``. As the official lists (ME-GraphAU
``tool/DISFA_image_label_process.py``): one example per line of ``SNxxx_au1.txt``, frame ``i`` (0-based) of
the left video, image path ``SNxxx/i.png``, AU present when its intensity is at least 2; an AU file that
is absent leaves that AU at 0 (logged).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from data_pipelines import align
from data_pipelines import build as common
from data_pipelines.build import RawConfig, RawDataError, tfds_split  # pylint: disable=unused-import
from megraph_jax.task import DISFA_AUS

AUS = DISFA_AUS  # label columns, official order
THRESHOLD = 2  # Official: occurrence = intensity >= 2 (intensities 0..5).
INTENSITIES = (0, 1, 2, 3, 4, 5)
# Subject groups of the official 3-fold protocol (the first path component of the official
# data/DISFA/list/DISFA_test_img_path_fold{3,2,1}.txt, in list order).
PARTS = (
  ("SN002", "SN010", "SN001", "SN026", "SN027", "SN032", "SN030", "SN009", "SN016"),
  ("SN013", "SN018", "SN011", "SN028", "SN012", "SN006", "SN031", "SN021", "SN024"),
  ("SN003", "SN029", "SN023", "SN025", "SN008", "SN005", "SN007", "SN017", "SN004"),
)
SUBJECT_RE = re.compile(r"SN\d{3}")
VIDEO_RE = re.compile(r"LeftVideo(SN\d{3}).*", re.IGNORECASE)
ISSUES = {
  "missing_au_file": "kept: the AU's column is 0 for this subject, as the official tool does",
  "missing_subject": "skipped: an official subject with no label folder in the release",
  "unknown_subject": "skipped: a subject in no subject group of the folds",
  "missing_video": "skipped: no left-camera video or frame folder for a labelled subject",
  "extra_video_frames": "ignored: the video has frames beyond the last label line",
  "label_frame_number": "kept: the frame number in the file differs from the line position (the line is used)",
}

CITATION = """@article{mavadati2013disfa,
  title={DISFA: A Spontaneous Facial Action Intensity Database},
  author={Mavadati, S. Mohammad and Mahoor, Mohammad H. and Bartlett, Kevin and Trinh, Philip and Cohn, Jeffrey F.},
  journal={IEEE Transactions on Affective Computing}, volume={4}, number={2}, pages={151--160}, year={2013}}"""

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
DISFA is licensed by its owners; request it at http://mohammadmahoor.com/disfa-contact-form/. Place
in the manual folder (--manual_dir) the left-camera videos (or frames extracted from them) and the
AU labels, e.g.:

  MANUAL_DIR/Videos_LeftCamera/LeftVideoSN001_comp.avi ...
  MANUAL_DIR/ActionUnit_Labels/SN001/SN001_au1.txt ...   (lines 'frame,intensity', intensity 0..5)

or, instead of videos, frames named by their 0-based index: MANUAL_DIR/<folder>/SN001/0.png ...
Reading videos needs OpenCV (pip install opencv-python-headless). Folders are found by search;
name them in a config ('frames_subdir', 'labels_subdir', 'source') if the search picks the wrong one.
"""


def read_au_file(path: str) -> tuple[np.ndarray, list[tuple[int, int]]]:
  """Reads ``SNxxx_auK.txt``: intensities ``[T]`` by line, and (line, frame number) pairs that are off."""
  base = os.path.basename(path)
  with open(path) as f:
    lines = f.read().splitlines()
  while lines and not lines[-1].strip():
    lines.pop()
  if not lines:
    raise RawDataError(f"{path} is empty; expected one 'frame,intensity' line per frame")
  out, off = [], []
  for lineno, text in enumerate(lines, 1):
    parts = text.split(",")
    if len(parts) != 2:
      raise RawDataError(
        f"{base} line {lineno}: expected 2 comma-separated columns 'frame,intensity', found "
        f"{len(parts)} ({text[:60]!r}) in {path}"
      )
    try:
      fr, val = int(parts[0]), int(parts[1])
    except ValueError:
      raise RawDataError(f"{base} line {lineno}: non-integer value in {text[:60]!r} in {path}") from None
    if val not in INTENSITIES:
      raise RawDataError(f"{base} line {lineno}: unknown intensity {val} in {path}; expected one of {INTENSITIES}")
    if fr != lineno:
      off.append((lineno, fr))
    out.append(val)
  return np.array(out, np.int32), off


def read_subject_labels(label_dir: str, subj: str, log: align.IssueLog) -> np.ndarray:
  """Occurrence labels ``[T, 8]`` of one subject (T = lines of the AU1 file)."""
  folder = os.path.join(label_dir, subj)
  au1 = os.path.join(folder, f"{subj}_au1.txt")
  if not os.path.isfile(au1):
    raise RawDataError(
      f"{au1} does not exist but {folder} does; the official protocol takes the frame count "
      "from the AU1 file. Restore it from the release"
    )
  n = read_au_file(au1)[0].shape[0]
  y = np.zeros((n, len(AUS)), np.int32)
  for j, au in enumerate(AUS):
    path = os.path.join(folder, f"{subj}_au{au}.txt")
    if not os.path.isfile(path):
      log.add("missing_au_file", f"{subj}/AU{au}", f"{path} does not exist")
      continue
    vals, off = read_au_file(path)
    if vals.shape[0] != n:
      raise RawDataError(
        f"{path} has {vals.shape[0]} frames but {os.path.basename(au1)} has {n}; the AU files of "
        "a subject must have one line per frame each"
      )
    if off:
      ln, fr = off[0]
      log.add(
        "label_frame_number",
        f"{subj}/AU{au}",
        f"{len(off)} line(s), first {os.path.basename(path)} line {ln} says frame {fr}",
      )
    y[:, j] = (vals >= THRESHOLD).astype(np.int32)
  return y


def _is_label_dir(d: str) -> bool:
  """Holds SNxxx/SNxxx_au1.txt."""
  try:
    return any(SUBJECT_RE.fullmatch(n) and os.path.isfile(os.path.join(d, n, f"{n}_au1.txt")) for n in os.listdir(d))
  except OSError:
    return False


def _is_video_dir(d: str) -> bool:
  """Holds LeftVideoSNxxx*.avi-style files."""
  try:
    return any(
      VIDEO_RE.fullmatch(os.path.splitext(n)[0]) and os.path.splitext(n)[1].lower() in align.VIDEO_EXTS
      for n in os.listdir(d)
    )
  except OSError:
    return False


def _is_frames_root(d: str) -> bool:
  """Holds SNxxx/<number>.png-style folders."""
  try:
    subs = [n for n in os.listdir(d) if SUBJECT_RE.fullmatch(n) and os.path.isdir(os.path.join(d, n))]
  except OSError:
    return False
  return any(common.numbered_files(os.path.join(d, s)) for s in subs[:3])


def locate(manual_dir: str, cfg: RawConfig) -> tuple[str, str, str]:
  """(label folder, frame source kind 'video' or 'frames', its folder) inside the manual folder."""
  hint = "see the manual download instructions:\n" + MANUAL_DOWNLOAD_INSTRUCTIONS
  labels = common.resolve_subdir(
    manual_dir,
    cfg.labels_subdir,
    "AU label folders (SN001/SN001_au1.txt ...)",
    _is_label_dir,
    ("ActionUnit_Labels",),
    hint,
  )
  kinds = ("video", "frames") if cfg.source == "auto" else (cfg.source,)
  errors = []
  for kind in kinds:
    accept = _is_video_dir if kind == "video" else _is_frames_root
    what = "left-camera videos (LeftVideoSN001_comp.avi ...)" if kind == "video" else "frame folders (SN001/0.png ...)"
    try:
      return (
        labels,
        kind,
        common.resolve_subdir(
          manual_dir, cfg.frames_subdir, what, accept, ("Videos_LeftCamera", "img", "frames"), hint
        ),
      )
    except common.ManualDirError as e:
      errors.append(str(e))
  raise common.ManualDirError(errors[-1] if len(errors) == 1 else f"{errors[0]}\nNor: {errors[1]}")


def _video_path(video_dir: str, subj: str) -> str | None:
  """The left-camera video of a subject, if any."""
  for n in sorted(os.listdir(video_dir)):
    stem, ext = os.path.splitext(n)
    m = VIDEO_RE.fullmatch(stem)
    if m and m.group(1).upper() == subj and ext.lower() in align.VIDEO_EXTS:
      return os.path.join(video_dir, n)
  return None


def _subject_frames(
  kind: str, source_dir: str, subj: str, labels: np.ndarray, log: align.IssueLog, stats: dict[str, Any]
) -> tuple[Iterator[align.Frame], int] | None:
  """Frames of one subject (lazily decoded for videos) and their planned count; None when absent."""
  n = labels.shape[0]

  def info(i: int, task: str) -> common.FrameInfo:
    return common.FrameInfo(path=f"{subj}/{i}.png", subject=subj, task=task, frame=i, label=labels[i])

  if kind == "video":
    video = _video_path(source_dir, subj)
    if video is None:
      log.add("missing_video", subj, f"no LeftVideo{subj}*.avi in {source_dir}")
      return None
    task = os.path.splitext(os.path.basename(video))[0]

    def gen() -> Iterator[align.Frame]:
      i = -1
      for i, arr in enumerate(align.video_frames(video)):
        if i >= n:
          log.add("extra_video_frames", f"{subj}/{i}", f"{video} frame {i}; labels end at {n - 1}")
          continue
        yield align.Frame(key=f"{subj}/{i}.png", sequence=subj, array=arr, meta=info(i, task))
      for j in range(i + 1, n):
        log.add("missing_frame", f"{subj}/{j}.png", f"{video} ends after {i + 1} frames; labels have {n}")

    return gen(), n
  folder = os.path.join(source_dir, subj)
  files = common.numbered_files(folder)
  if not files:
    log.add("missing_video", subj, f"no frame folder {folder}")
    return None
  base = 1 if (0 not in files and 1 in files and n in files) else 0
  if base:
    stats["one_based_frame_folders"].append(subj)
    logging.info("DISFA: %s numbers its frames from 1: label line i + 1 is file i + 1", folder)
  frames = []
  for i in range(n):
    name = files.get(i + base)
    if name is None:
      log.add("missing_frame", f"{subj}/{i}.png", f"frame {i + base} not in {folder}")
      continue
    frames.append(
      align.Frame(key=f"{subj}/{i}.png", sequence=subj, path=os.path.join(folder, name), meta=info(i, subj))
    )
  stats["frames_without_label"] += len(set(files) - set(range(base, n + base)))
  return iter(frames), len(frames)


def plan(manual_dir: str, cfg: RawConfig, log: align.IssueLog) -> tuple[list[list[Any]], dict[str, Any]]:
  """Reads every label file: per subject group, (subject, frame iterator, count); and metadata facts."""
  parts = common.check_parts(cfg.parts if cfg.parts is not None else PARTS, f"config {cfg.name} parts")
  label_dir, kind, source_dir = locate(manual_dir, cfg)
  logging.info("DISFA: labels under %s, %s under %s", label_dir, kind, source_dir)
  known = {s for p in parts for s in p}
  present = {n for n in os.listdir(label_dir) if SUBJECT_RE.fullmatch(n)}
  for s in sorted(present - known):
    log.add("unknown_subject", s, "in no subject group of the folds; not used")
  stats: dict[str, Any] = {"frames_without_label": 0, "one_based_frame_folders": []}
  planned: list[list[Any]] = [[], [], []]
  for pi, group in enumerate(parts):
    for subj in group:
      if subj not in present:
        log.add("missing_subject", subj, f"no {os.path.join(label_dir, subj)}")
        continue
      labels = read_subject_labels(label_dir, subj, log)
      got = _subject_frames(kind, source_dir, subj, labels, log, stats)
      if got is not None:
        planned[pi].append((subj, got[0], got[1]))
  common.require_frames("DISFA", [[c for _, _, c in p if c] for p in planned], parts, manual_dir, log)
  meta = {
    "aus": list(AUS),
    "threshold": THRESHOLD,
    "parts": [list(p) for p in parts],
    "label_dir": label_dir,
    "frame_source": kind,
    "frame_dir": source_dir,
    **stats,
    "splits": {
      common.part_split_name(i): {
        "subjects": [s for s, _, _ in planned[i]],
        "planned_frames": sum(c for _, _, c in planned[i]),
      }
      for i in range(3)
    },
    "folds": {str(k): {s: tfds_split(k, s) for s in common.SPLITS} for k in (1, 2, 3)},
  }
  return planned, meta


DESCRIPTION = __doc__.split("\n\n")[0]  # the module docstring's first paragraph


class Disfa(common.RawBuilder, tfds.core.GeneratorBasedBuilder):
  """DISFA AU occurrence (8 AUs, intensity >= 2) with the official ME-GraphAU 3-fold subject split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Raw release -> MTCNN-aligned faces, official folds."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
    RawConfig(name="default", image_format="png", description="Left camera, 256 px PNG (as the official crops)."),
    RawConfig(name="jpeg", image_format="jpeg", description="Left camera, 256 px JPEG (about 8x smaller)."),
    RawConfig(
      name="prealigned",
      aligner="none",
      image_format="png",
      description="Frames already aligned (e.g. the official crops): centre crop + resize.",
    ),
  ]
  DEFAULT_CONFIG_NAME = "default"

  NAME = "DISFA"
  NUM_AUS = len(AUS)
  DESCRIPTION = DESCRIPTION
  CITATION = CITATION
  HOMEPAGE = "http://mohammadmahoor.com/disfa/"
  ISSUES = ISSUES

  def plan(self, manual_dir: str, cfg: RawConfig, log: align.IssueLog) -> tuple[list[Any], dict[str, Any]]:
    return plan(manual_dir, cfg, log)

  def part_frames(
    self, planned_part: list[tuple[Any, Iterator[align.Frame], int]]
  ) -> tuple[Iterable[align.Frame], int]:
    return itertools.chain.from_iterable(it for _, it, _ in planned_part), sum(c for _, _, c in planned_part)
