"""Shared parts of the BP4D and DISFA raw-release TFDS builders, and their build command.

``python -m data_pipelines.build bp4d --manual_dir=DIR [--data_dir=...] [--config=...]`` takes the flags
of ``tfds build`` and runs the same code; it exists because the ``tfds`` command of
tensorflow-datasets 4.9.x imports apache-beam and mlcroissant at start-up. With those installed
(``requirements-tfds-cli.txt``), ``tfds build data_pipelines/bp4d.py --manual_dir=DIR`` is equivalent.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from data_pipelines import align

SPLITS = ("train", "test")
MAX_LISTED = 200  # Affected items per kind kept in the dataset metadata (all are counted).


class RawDataError(ValueError):
  """The raw release is malformed; the message names the file (and line) and what to do."""


class ManualDirError(FileNotFoundError):
  """The manual download folder is missing something; the message says what and where."""


@dataclasses.dataclass(eq=False)
class RawConfig(tfds.core.BuilderConfig):
  """Build options (pass one as JSON on the CLI: ``tfds build ... --config '{"name": "x", ...}'``)."""

  image_size: int = 256  # Side of the stored aligned face, px (official crops: 256; training crops 224).
  aligner: str = "mtcnn"  # "mtcnn", or "none" when the frames are already aligned face crops.
  missing_face: str = "previous"  # Frame without a face: "previous" (borrow landmarks) or "skip".
  image_format: str = "jpeg"  # Stored encoding: "jpeg" or "png".
  workers: int = 0  # Alignment processes (0: all cores).
  unlabelled: str = "keep"  # BP4D label 9: "keep" the frame as the official tool does, or "drop" it.
  source: str = "auto"  # DISFA frames: "video", "frames" (extracted folder) or "auto".
  frames_subdir: str = ""  # Frames folder inside manual_dir ("" = search for it).
  labels_subdir: str = ""  # Label folder inside manual_dir ("" = search for it).
  parts: Any = None  # Three subject groups overriding the official ones, e.g. [["F001"], ["M011"], ["F007"]].

  def __post_init__(self):
    if self.unlabelled not in ("keep", "drop"):
      raise ValueError(f"config {self.name}: unlabelled must be 'keep' or 'drop', got {self.unlabelled!r}")
    if self.image_format not in ("jpeg", "png"):
      raise ValueError(f"config {self.name}: image_format must be 'jpeg' or 'png', got {self.image_format!r}")
    if self.source not in ("auto", "video", "frames"):
      raise ValueError(f"config {self.name}: source must be 'auto', 'video' or 'frames', got {self.source!r}")
    self.align_config()  # Validates aligner, missing_face and image_size.

  def align_config(self) -> align.AlignConfig:
    """The alignment settings of this config."""
    return align.AlignConfig(
      size=self.image_size, aligner=self.aligner, missing_face=self.missing_face, workers=self.workers
    )


# ------------------------------------------------------------------------------------------------
# Folds.


def fold_parts(fold: int, split: str) -> tuple[int, ...]:
  """Indices (0-based) of the subject groups forming ``split`` of ``fold``, in the official list order.

  The official tools: fold 1 trains on parts 1+2 and tests on part 3, fold 2 trains on 1+3 and tests on
  2, fold 3 trains on 2+3 and tests on 1.
  """
  if fold not in (1, 2, 3) or split not in SPLITS:
    raise ValueError(f"fold must be 1..3 and split one of {SPLITS}, got fold={fold!r}, split={split!r}")
  test = 3 - fold
  return (test,) if split == "test" else tuple(p for p in range(3) if p != test)


def part_split_name(part: int) -> str:
  """Stored TFDS split holding subject group ``part`` (0-based): the test split of one fold."""
  return f"fold{3 - part}_test"


def tfds_split(fold: int, split: str) -> str:
  """TFDS split string of ``split`` of ``fold``, e.g. ``tfds_split(1, "train") == "fold3_test+fold2_test"``.

  Only the three test splits are stored (each example once); a fold's training set is the union of the
  other two folds' test splits, concatenated in the official order.
  """
  return "+".join(part_split_name(p) for p in fold_parts(fold, split))


def check_parts(parts: Sequence[Sequence[str]], where: str) -> tuple[tuple[str, ...], ...]:
  """Validates three disjoint, non-empty subject groups; raises RawDataError naming the duplicate."""
  if len(parts) != 3:
    raise RawDataError(f"{where}: expected 3 subject groups (one per fold), got {len(parts)}")
  seen: dict[str, int] = {}
  for i, group in enumerate(parts):
    if not group:
      raise RawDataError(f"{where}: subject group {i + 1} is empty; every fold needs test subjects")
    for s in group:
      if s in seen:
        where_else = "twice in group" if seen[s] == i else f"in groups {seen[s] + 1} and"
        raise RawDataError(
          f"{where}: subject {s} is {where_else} {i + 1}; the folds must be subject-independent "
          "(each subject in exactly one group)"
        )
      seen[s] = i
  return tuple(tuple(g) for g in parts)


# ------------------------------------------------------------------------------------------------
# Folder search.


def listing(path: str, limit: int = 12) -> str:
  """A short listing of a folder for error messages."""
  try:
    names = sorted(os.listdir(path))
  except OSError:
    return "(unreadable)"
  shown = ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")
  return shown or "(empty)"


def find_dirs(root: str, accept: Callable[[str], bool], max_depth: int = 4) -> list[str]:
  """Folders under ``root`` (itself included, at most max_depth deep) for which ``accept(path)``."""
  out = []
  root = os.path.abspath(root)
  base = root.count(os.sep)
  for d, dirs, _ in os.walk(root):
    dirs.sort()
    if d.count(os.sep) - base >= max_depth:
      dirs.clear()
    if accept(d):
      out.append(d)
  return out


def resolve_subdir(
  manual_dir: str, subdir: str, what: str, accept: Callable[[str], bool], prefer: Sequence[str], hint: str
) -> str:
  """The folder holding ``what``: ``manual_dir/subdir`` if given, else the best match of a search."""
  if subdir:
    path = os.path.join(manual_dir, subdir)
    if not os.path.isdir(path) or not accept(path):
      raise ManualDirError(f"{path} (from the config) does not hold {what}; {hint}")
    return path
  found = find_dirs(manual_dir, accept)
  if not found:
    raise ManualDirError(f"no folder with {what} found under {manual_dir} (it holds: {listing(manual_dir)}); {hint}")
  found.sort(key=lambda p: (os.path.basename(p) not in prefer, p.count(os.sep), p))
  if len(found) > 1:
    logging.info("Several folders hold %s; using %s (others: %s)", what, found[0], ", ".join(found[1:4]))
  return found[0]


def numbered_files(folder: str, exts: Sequence[str] = align.IMAGE_EXTS) -> dict[int, str]:
  """Frame number -> file name for the images of a folder named by number (``12.jpg``, ``0012.png``)."""
  out: dict[int, str] = {}
  try:
    names = sorted(os.listdir(folder))
  except OSError:
    return out
  for n in names:
    stem, ext = os.path.splitext(n)
    if ext.lower() in exts and re.fullmatch(r"\d+", stem):
      k = int(stem)
      if k in out:
        raise RawDataError(f"{folder}: {out[k]} and {n} both name frame {k}; keep one of them")
      out[k] = n
  return out


# ------------------------------------------------------------------------------------------------
# Examples.


@dataclasses.dataclass
class FrameInfo:
  """What an example records about its frame (kept in align.Frame.meta)."""

  path: str  # Official relative path, e.g. F001/T1/2440.jpg or SN001/0.png (also the example key).
  subject: str
  task: str
  frame: int
  label: np.ndarray  # [N] int32


def features(num_aus: int, image_size: int, image_format: str) -> tfds.features.FeaturesDict:
  """The example features of both builders."""
  return tfds.features.FeaturesDict(
    {
      "image": tfds.features.Image(
        shape=(image_size, image_size, 3), encoding_format=image_format, doc="aligned face, RGB"
      ),
      "label": tfds.features.Tensor(
        shape=(num_aus,), dtype=np.int32, doc="AU occurrence per AU (1 present, 0 absent; BP4D 9 = not coded)"
      ),
      "subject": tfds.features.Text(doc="subject ID, e.g. F001 or SN001"),
      "task": tfds.features.Text(doc="BP4D task (T1..T8) or DISFA video"),
      "frame": tfds.features.Scalar(dtype=np.int32, doc="frame number (BP4D: label CSV; DISFA: 0-based index)"),
      "path": tfds.features.Text(doc="relative image path in the official list files"),
    }
  )


def examples(
  frames: Iterable[align.Frame], cfg: RawConfig, log: align.IssueLog, desc: str, total: int | None
) -> Iterator[tuple[str, dict[str, Any]]]:
  """Aligns frames (meta = FrameInfo) and yields TFDS (key, example) pairs; skipped frames go to ``log``.

  Raises RawDataError when every frame was skipped (an empty split).
  """
  n = 0
  for res in align.align_frames(frames, cfg.align_config(), log, progress=desc, total=total):
    if res.image is None:
      continue
    info: FrameInfo = res.frame.meta
    n += 1
    yield (
      info.path,
      {
        "image": res.image,
        "label": info.label.astype(np.int32),
        "subject": info.subject,
        "task": info.task,
        "frame": int(info.frame),
        "path": info.path,
      },
    )
  if n == 0:
    raise RawDataError(f"{desc}: every frame was skipped, the split would be empty. Bad input:\n{log.summary()}")


def require_frames(
  name: str, planned: Sequence[Sequence[Any]], parts: Sequence[Sequence[str]], manual_dir: str, log: align.IssueLog
) -> None:
  """Raises RawDataError when a subject group has no labelled frame (its fold cannot be formed)."""
  for i, frames in enumerate(planned):
    if not frames:
      raise RawDataError(
        f"{name}: no labelled frames for subject group {i + 1} ({part_split_name(i)}: {', '.join(parts[i])}) "
        f"under {manual_dir}; every fold needs test subjects. Bad input so far:\n{log.summary()}\n"
        "Add these subjects' frames and label files, or pass a config with `parts` naming the subjects you have."
      )


def metadata_update(meta: dict[str, Any], log: align.IssueLog, extra: dict[str, Any]) -> None:
  """Stores the issue counts (and the first MAX_LISTED items per kind) in the dataset metadata."""
  meta["bad_input"] = log.to_json(MAX_LISTED)
  meta["bad_input_explained"] = {k: v for k, v in log.explained.items()}
  meta.update(extra)


def log_summary(name: str, log: align.IssueLog) -> None:
  """Writes the issue counts to the build log."""
  if not log.items:
    logging.info("%s: no bad input", name)
  for line in log.summary().splitlines() if log.items else ():
    logging.warning("%s bad input: %s", name, line)


class RawBuilder:
  """What the BP4D and DISFA TFDS builders share (mixed in before ``tfds.core.GeneratorBasedBuilder``): the
  features and metadata, the three subject groups planned up front (so bad label files fail fast), their examples,
  and the bad-input summary. A builder sets ``NAME``, ``NUM_AUS``, ``ISSUES``, ``DESCRIPTION``, ``CITATION``,
  ``HOMEPAGE`` and defines ``plan`` (manual_dir, config, log -> (planned groups, metadata)) and ``part_frames``
  (group -> frames, count)."""

  NAME: str
  NUM_AUS: int
  ISSUES: dict[str, str]  # kinds of bad input -> what they mean (align.IssueLog)
  DESCRIPTION: str
  CITATION: str
  HOMEPAGE: str

  def plan(self, manual_dir: str, cfg: RawConfig, log: align.IssueLog) -> tuple[list[Any], dict[str, Any]]:
    raise NotImplementedError

  def part_frames(self, planned_part: Any) -> tuple[Iterable[align.Frame], int]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    """Features, keys and metadata."""
    cfg = self.builder_config
    return self.dataset_info_from_configs(
      features=features(self.NUM_AUS, cfg.image_size, cfg.image_format),
      description=self.DESCRIPTION,
      citation=self.CITATION,
      supervised_keys=("image", "label"),
      homepage=self.HOMEPAGE,
      disable_shuffling=True,  # Keep the official list order.
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    """Plans the three subject groups (reading all labels first, so bad label files fail fast)."""
    self._log = align.IssueLog(self.ISSUES)
    self._planned, self._meta = self.plan(os.fspath(dl_manager.manual_dir), self.builder_config, self._log)
    self._done = 0
    return {part_split_name(i): self._generate_examples(i) for i in range(3)}

  def _generate_examples(self, part: int):
    """Aligned examples of subject group ``part``."""
    frames, total = self.part_frames(self._planned[part])
    yield from examples(frames, self.builder_config, self._log, f"{self.NAME} {part_split_name(part)}", total)
    self._done += 1
    metadata_update(self.info.metadata, self._log, self._meta)
    if self._done == 3:
      log_summary(self.NAME, self._log)


# ------------------------------------------------------------------------------------------------
# CLI.

BUILDERS = {"bp4d": "bp4d.py", "disfa": "disfa.py"}


def main(argv: Sequence[str] | None = None) -> None:
  """``tfds build`` for the builders of this package (same flags; the first argument names the dataset)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.scripts.cli import build as tfds_build  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.scripts.cli import cli_utils  # pylint: disable=g-import-not-at-top

  argv = list(sys.argv if argv is None else argv)
  here = os.path.dirname(os.path.abspath(__file__))
  if len(argv) < 2 or argv[1] not in BUILDERS:
    print(
      f"usage: python -m data_pipelines.build {{{','.join(BUILDERS)}}} --manual_dir=DIR [tfds build flags]\n\n"
      + MANUAL_HELP,
      file=sys.stderr,
    )
    sys.exit(2)
  argv = [argv[0], os.path.join(here, BUILDERS[argv[1]]), *argv[2:]]
  parse = cli_utils.make_flags_parser(tfds_build.Args, description="Build BP4D or DISFA from its raw release.")

  def run(args: tfds_build.Args) -> None:
    logging.set_verbosity(logging.INFO)
    args.execute()

  app.run(run, argv=argv, flags_parser=parse)


MANUAL_HELP = """\
Configs: default, drop_unlabelled (BP4D), jpeg (DISFA), prealigned; or JSON, e.g.
  --config='{"name": "mine", "image_size": 224, "workers": 2}'  (fields of RawConfig in data_pipelines/build.py)
Each build logs its bad input (skipped or repaired frames, by kind) and stores the counts in the
dataset metadata (metadata.json, key bad_input)."""


if __name__ == "__main__":
  main()
