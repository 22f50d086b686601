"""BP4D-Spontaneous as a TFDS dataset built from the raw release: MTCNN-aligned faces, 12 AU labels, 3 folds.

Build: ``python -m data_pipelines.build bp4d --manual_dir=/path/to/BP4D [--config drop_unlabelled]``.
Load fold ``k``: ``tfds.load("bp4d", split=bp4d.tfds_split(k, "train"))``. The three stored splits are the
official subject groups (``fold{k}_test``); a fold's training set is the other two, as in the official
lists (ME-GraphAU ``tool/BP4D_image_label_process.py``): every frame of the AU occurrence CSVs, in their
order, labels 0/1 and 9 (not coded) kept unless the ``drop_unlabelled`` config is chosen.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from data_pipelines import align
from data_pipelines import build as common
from data_pipelines.build import RawConfig, RawDataError, tfds_split  # pylint: disable=unused-import
from megraph_jax.task import BP4D_AUS, UNLABELLED

AUS = BP4D_AUS  # label columns, official order
TASKS = ("T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8")
LABEL_VALUES = (0, 1, UNLABELLED)  # 9: the frame was not coded for that AU.
# Subject groups of the official 3-fold protocol (the first path component of the official
# data/BP4D/list/BP4D_test_img_path_fold{3,2,1}.txt, in list order).
PARTS = (
  ("F001", "M007", "F018", "F008", "F002", "M004", "F010", "F009", "M012", "M001", "F016", "M014", "F023", "M008"),
  ("M011", "F003", "M010", "M002", "F005", "F022", "M018", "M017", "F013", "M016", "F020", "F011", "M013", "M005"),
  ("F007", "F015", "F006", "F019", "M006", "M009", "F012", "M003", "F004", "F021", "F017", "M015", "F014"),
)
SUBJECT_RE = re.compile(r"[FM]\d{3}")
CSV_RE = re.compile(r"([FM]\d{3})_(T\d+)\.csv")
ISSUES = {
  "unlabelled_kept": "kept with label 9 for the uncoded AUs, as the official tool does (config unlabelled='keep')",
  "unlabelled_dropped": "skipped: some AU is 9 (not coded) and the config has unlabelled='drop'",
  "missing_label_file": "skipped: no AU occurrence CSV for this subject and task",
  "missing_subject": "skipped: an official subject with neither frames nor labels in the release",
  "unknown_subject": "skipped: a subject in no subject group of the folds",
}

CITATION = """@article{zhang2014bp4d,
  title={BP4D-Spontaneous: a high-resolution spontaneous 3D dynamic facial expression database},
  author={Zhang, Xing and Yin, Lijun and Cohn, Jeffrey F. and Canavan, Shaun and Reale, Michael and Horowitz, Andy
          and Liu, Peng and Girard, Jeffrey M.},
  journal={Image and Vision Computing}, volume={32}, number={10}, pages={692--706}, year={2014}}"""

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
BP4D-Spontaneous is licensed by Binghamton University; request it from its owners
(http://www.cs.binghamton.edu/~lijun/Research/3DFE/3DFE_Analysis.html). Place the release in the
manual folder (--manual_dir) with its 2D frames extracted and the AU occurrence CSVs, e.g.:

  MANUAL_DIR/2D+3D/F001/T1/0001.jpg ...      (frames; any folder name, frame files named by number)
  MANUAL_DIR/AUCoding/AU_OCC/F001_T1.csv ... (header row of AU numbers, first column '0' = frame number)

Frame archives (e.g. F001.zip) must be extracted first. Folders are found by search; name them in a
config ('frames_subdir', 'labels_subdir') if the search picks the wrong one.
"""


def read_au_csv(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads an AU_OCC CSV: frame numbers ``[M]``, labels ``[M, 12]`` (AUS order) and line numbers ``[M]``."""
  base = os.path.basename(path)
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  while rows and not any(c.strip() for c in rows[-1]):
    rows.pop()
  if not rows:
    raise RawDataError(f"{path} is empty; expected a header row of AU numbers and one row per frame")
  header = [c.strip() for c in rows[0]]
  missing = [str(a) for a in ("0",) + AUS if str(a) not in header]
  if missing:
    raise RawDataError(
      f"{base} line 1: header lacks column(s) {', '.join(missing)} (frame column '0' and AUs "
      f"{', '.join(map(str, AUS))}); found {','.join(header[:30])} in {path}. Use the CSVs of "
      "AUCoding/AU_OCC as distributed"
    )
  idx = [header.index(str(a)) for a in AUS]
  fcol = header.index("0")
  frames, labels, lines = [], [], []
  seen: dict[int, int] = {}
  for lineno, row in enumerate(rows[1:], 2):
    if not any(c.strip() for c in row):
      raise RawDataError(f"{base} line {lineno}: empty row inside the table in {path}")
    if len(row) != len(header):
      raise RawDataError(
        f"{base} line {lineno}: expected {len(header)} columns as in the header, found {len(row)} in {path}"
      )
    try:
      fr = int(float(row[fcol]))
    except ValueError:
      raise RawDataError(f"{base} line {lineno}: frame number {row[fcol]!r} is not an integer in {path}") from None
    if fr in seen:
      raise RawDataError(f"{base} line {lineno}: frame {fr} repeats line {seen[fr]} in {path}")
    seen[fr] = lineno
    vals = []
    for au, j in zip(AUS, idx):
      tok = row[j].strip()
      try:
        v = float(tok)
      except ValueError:
        v = None
      if v is None or v not in LABEL_VALUES:
        raise RawDataError(
          f"{base} line {lineno}, column {j + 1} (AU{au}): unknown value {tok!r} in {path}; "
          f"expected one of {LABEL_VALUES} (9 = not coded)"
        )
      vals.append(int(v))
    frames.append(fr)
    labels.append(vals)
    lines.append(lineno)
  return np.array(frames, np.int64), np.array(labels, np.int32).reshape(-1, len(AUS)), np.array(lines, np.int64)


def _is_label_dir(d: str) -> bool:
  """Holds F001_T1.csv-style files."""
  try:
    return any(CSV_RE.fullmatch(n) for n in os.listdir(d))
  except OSError:
    return False


def _is_frames_root(d: str) -> bool:
  """Holds F001/T1/-style folders."""
  try:
    subs = [n for n in os.listdir(d) if SUBJECT_RE.fullmatch(n) and os.path.isdir(os.path.join(d, n))]
  except OSError:
    return False
  for s in subs[:5]:
    if any(re.fullmatch(r"T\d+", t) for t in os.listdir(os.path.join(d, s))):
      return True
  return False


def locate(manual_dir: str, cfg: RawConfig) -> tuple[str, str]:
  """(frames root, label folder) inside the manual folder."""
  hint = "see the manual download instructions:\n" + MANUAL_DOWNLOAD_INSTRUCTIONS
  labels = common.resolve_subdir(
    manual_dir, cfg.labels_subdir, "AU occurrence CSVs (F001_T1.csv ...)", _is_label_dir, ("AU_OCC",), hint
  )
  try:
    frames = common.resolve_subdir(
      manual_dir,
      cfg.frames_subdir,
      "frame folders (F001/T1/<frame>.jpg ...)",
      _is_frames_root,
      ("2D+3D", "2DFeatures", "BP4D-training", "Sequences", "img"),
      hint,
    )
  except common.ManualDirError as e:
    zips = [os.path.join(d, n) for d, _, fs in os.walk(manual_dir) for n in fs if n.lower().endswith(".zip")]
    if zips:
      raise common.ManualDirError(
        f"{e}\nFound archives such as {zips[0]}: extract them so that <folder>/F001/T1/<frame>.jpg exist"
      ) from None
    raise
  return frames, labels


def plan(manual_dir: str, cfg: RawConfig, log: align.IssueLog) -> tuple[list[list[align.Frame]], dict[str, Any]]:
  """Reads every label CSV and matches frames: the frames of each subject group and metadata facts.

  Malformed label files raise RawDataError (file and line); missing frames, subjects and label files
  are logged and skipped.
  """
  parts = common.check_parts(cfg.parts if cfg.parts is not None else PARTS, f"config {cfg.name} parts")
  frames_root, label_dir = locate(manual_dir, cfg)
  logging.info("BP4D: frames under %s, labels under %s", frames_root, label_dir)
  known = {s for p in parts for s in p}
  csv_subjects = {m.group(1) for m in map(CSV_RE.fullmatch, os.listdir(label_dir)) if m}
  frame_subjects = {n for n in os.listdir(frames_root) if SUBJECT_RE.fullmatch(n)}
  for s in sorted((csv_subjects | frame_subjects) - known):
    log.add("unknown_subject", s, "in no subject group of the folds; not used")
  planned: list[list[align.Frame]] = [[], [], []]
  stats = {"frames_without_label": 0, "unlabelled_frames": 0, "unlabelled_values": 0}
  for pi, group in enumerate(parts):
    for subj in group:
      if subj not in csv_subjects and subj not in frame_subjects:
        log.add("missing_subject", subj, f"no {subj}_T*.csv in {label_dir} and no {subj}/ in {frames_root}")
        continue
      for task in TASKS:
        csv_path = os.path.join(label_dir, f"{subj}_{task}.csv")
        task_dir = os.path.join(frames_root, subj, task)
        if not os.path.isfile(csv_path):
          log.add("missing_label_file", f"{subj}/{task}", f"{csv_path} does not exist")
          continue
        fnums, labels, lines = read_au_csv(csv_path)
        files = common.numbered_files(task_dir)
        stats["frames_without_label"] += len(set(files) - set(fnums.tolist()))
        for fr, y, ln in zip(fnums.tolist(), labels, lines.tolist()):
          rel = f"{subj}/{task}/{fr}.jpg"
          n9 = int(np.sum(y == 9))
          if n9:
            stats["unlabelled_frames"] += 1
            stats["unlabelled_values"] += n9
            coded = ", ".join(f"AU{a}" for a, v in zip(AUS, y) if v == 9)
            if cfg.unlabelled == "drop":
              log.add("unlabelled_dropped", rel, f"{os.path.basename(csv_path)} line {ln}: {coded} = 9")
              continue
            log.add("unlabelled_kept", rel, f"{os.path.basename(csv_path)} line {ln}: {coded} = 9")
          name = files.get(fr)
          if name is None:
            where = task_dir if os.path.isdir(task_dir) else f"{task_dir} (folder missing)"
            log.add("missing_frame", rel, f"frame {fr} of {os.path.basename(csv_path)} line {ln} not in {where}")
            continue
          info = common.FrameInfo(path=rel, subject=subj, task=task, frame=fr, label=y)
          planned[pi].append(
            align.Frame(key=rel, sequence=f"{subj}/{task}", path=os.path.join(task_dir, name), meta=info)
          )
  common.require_frames("BP4D", planned, parts, manual_dir, log)
  meta = {
    "aus": list(AUS),
    "parts": [list(p) for p in parts],
    "frames_root": frames_root,
    "label_dir": label_dir,
    "unlabelled_policy": cfg.unlabelled,
    **stats,
    "splits": {
      common.part_split_name(i): {
        "subjects": sorted({f.meta.subject for f in planned[i]}),
        "planned_frames": len(planned[i]),
      }
      for i in range(3)
    },
    "folds": {str(k): {s: tfds_split(k, s) for s in common.SPLITS} for k in (1, 2, 3)},
  }
  return planned, meta


DESCRIPTION = __doc__.split("\n\n")[0]  # the module docstring's first paragraph


class Bp4d(common.RawBuilder, tfds.core.GeneratorBasedBuilder):
  """BP4D-Spontaneous AU occurrence (12 AUs) with the official ME-GraphAU 3-fold subject split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Raw release -> MTCNN-aligned faces, official folds."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
    RawConfig(name="default", description="Every CSV frame (label 9 kept, as the official lists), 256 px JPEG."),
    RawConfig(name="drop_unlabelled", unlabelled="drop", description="Frames with any AU = 9 dropped."),
    RawConfig(name="prealigned", aligner="none", description="Frames already aligned: centre crop + resize."),
  ]
  DEFAULT_CONFIG_NAME = "default"

  NAME = "BP4D"
  NUM_AUS = len(AUS)
  DESCRIPTION = DESCRIPTION
  CITATION = CITATION
  HOMEPAGE = "http://www.cs.binghamton.edu/~lijun/Research/3DFE/3DFE_Analysis.html"
  ISSUES = ISSUES

  def plan(self, manual_dir: str, cfg: RawConfig, log: align.IssueLog) -> tuple[list[Any], dict[str, Any]]:
    return plan(manual_dir, cfg, log)

  def part_frames(self, planned_part: list[align.Frame]) -> tuple[Iterable[align.Frame], int]:
    return planned_part, len(planned_part)
