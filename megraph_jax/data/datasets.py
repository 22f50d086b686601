"""The datasets of a run: the official on-disk layout (BP4D, DISFA, or any set written like them), or the synthetic
set generated on first use; list files read with errors that name the file and line.

Layout (as the official code): ``ROOT/img/<relative path>`` and ``ROOT/list/`` with
``NAME_{train,test}_img_path_foldK.txt`` (one relative path per line), ``NAME_{train,test}_label_foldK.txt``
(N space-separated 0/1 per line; BP4D's 9 = "not coded" is kept, as the official tool keeps it, and left
out of the losses, the class weights and the metrics: ``megraph_jax.task``), optional
``NAME_train_AU_relation_foldK.txt`` (N*N values per line, 2*y_j + y_k at column j*N + k) and
``NAME_weight_foldK.txt`` (N tab-separated class weights). List files are UTF-8 text.

``Dataset`` is a dataset with its root; ``from_config`` gives the one a config names. Every problem with
the data is a ``DatasetError`` (``DatasetNotFoundError`` for what does not exist), which ``main.py`` turns
into exit status 2 with the message. The tf.data batches over a split are ``megraph_jax.data.input_pipeline``'s.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from megraph_jax import task
from megraph_jax.data import synthetic
from megraph_jax.errors import DatasetError, DatasetNotFoundError

if TYPE_CHECKING:  # a type only: the GPU image without ml_collections imports this module
  import ml_collections

__all__ = [
  "Dataset",
  "DatasetError",
  "DatasetNotFoundError",
  "FoldData",
  "SplitData",
  "from_config",
  "list_file",
  "load_class_weights",
  "read_split",
]

SPLITS = ("train", "val", "test")  # 'val': OpenGraphAU's hybrid layout only
FOLDS = (1, 2, 3)
NO_FOLDS = 0  # fold 0: a layout without folds, OpenGraphAU's ROOT/list/NAME_{split}_{what}.txt
_MAX_LISTED = 5  # Missing images named in an error message.


def list_file(root: str, name: str, fold: int, what: str, split: str = "train") -> str:
  """``ROOT/list/NAME_{split}_{what}_fold{k}.txt`` (official layout); ``what`` in {img_path, label, AU_relation,
  weight} (``NAME_weight_fold{k}.txt`` has no split). Fold 0 (``NO_FOLDS``): OpenGraphAU's
  ``NAME_{split}_{what}.txt`` and ``NAME_train_weight.txt``."""
  if fold == NO_FOLDS:
    return os.path.join(root, "list", f"{name}_{'train' if what == 'weight' else split}_{what}.txt")
  if what == "weight":
    return os.path.join(root, "list", f"{name}_weight_fold{fold}.txt")
  return os.path.join(root, "list", f"{name}_{split}_{what}_fold{fold}.txt")


def _prepare_hint(root: str, name: str) -> str:
  """How to obtain a dataset in the expected layout."""
  return (
    f"prepare it with the official tools (tool/{name}_image_label_process.py, "
    f"tool/{name}_deal_AU_relation.py, tool/{name}_calculate_AU_class_weights.py of ME-GraphAU) so that "
    f"{root} holds img/ and list/, or write a synthetic set there with "
    f"`python -m data_pipelines.synthetic {root} --name {name}`"
  )


def _require_file(path: str, root: str, name: str) -> None:
  """Raises DatasetNotFoundError with the expected location and a preparation hint."""
  if os.path.isfile(path):
    return
  folder = os.path.dirname(path)
  where = "" if os.path.isdir(folder) else f" (the folder {folder} does not exist)"
  raise DatasetNotFoundError(f"dataset list file not found: expected {path}{where}; {_prepare_hint(root, name)}")


@dataclasses.dataclass(frozen=True)
class SplitData:
  """One split of one fold: image paths relative to ``ROOT/img``, AU labels and relation labels."""

  paths: tuple[str, ...]  # [M]
  labels: np.ndarray  # [M, N] int32 in {0, 1, 9 (task.UNLABELLED)}
  relations: np.ndarray  # [M, N*N] int32 in {0, 1, 2, 3}; -1 where an AU is not coded
  name: str = ""
  fold: int = 0
  split: str = ""
  img_list: str = ""  # the image list file, line i + 1 = paths[i] (named in errors; '' if not read from one)
  root: str = ""  # the dataset root: images are ROOT/img/paths[i]

  @property
  def num_examples(self) -> int:
    """M."""
    return len(self.paths)

  def fingerprint(self) -> str:
    """What a run trains or evaluates on, independent of where the dataset lies: a hash of the image paths (relative
    to ``ROOT/img``) and the AU labels, in list order. Stored with each stage; a resume on other content is refused."""
    h = hashlib.sha256()
    h.update("\n".join(self.paths).encode())
    h.update(np.ascontiguousarray(self.labels, np.int64).tobytes())
    return f"sha256 {h.hexdigest()[:16]} of {len(self.paths)} images x {self.labels.shape[-1]} AU labels"

  @property
  def num_aus(self) -> int:
    """N."""
    return int(self.labels.shape[1])


@dataclasses.dataclass(frozen=True)
class FoldData:
  """What a stage trains and evaluates on: one fold's training split and evaluation split (each carrying its dataset
  root) and the loss's per-AU class weights (``Dataset.class_weights``). Read once per fold (``Dataset.fold_data``)."""

  fold: int
  train: SplitData
  test: SplitData  # the evaluation split: 'test', or 'val' in the layout without folds
  class_weights: np.ndarray  # [N] float32


def _num_aus(name: str, default: int | None = None) -> int | None:
  """N of a dataset known by name (BP4D 12, DISFA 8), else ``default``."""
  if name == task.HYBRID:
    return len(task.OPENGRAPHAU_AUS)
  return len(task.DATASET_AUS[name]) if name in task.DATASET_AUS else default


def _text_lines(path: str) -> list[str]:
  """The lines of a list file read as UTF-8 (a BOM is dropped); DatasetError naming the first line that is not."""
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    start = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
    lineno = raw.count(b"\n", 0, start) + 1
    col = start - (raw.rfind(b"\n", 0, start) + 1) + 1
    raise DatasetError(
      f"{os.path.basename(path)} line {lineno}, byte {col}: not UTF-8 text (byte 0x{raw[start]:02x}) "
      f"in {path}; list files must be UTF-8 (re-save it as UTF-8)"
    ) from None
  return list(io.StringIO(text, newline=None))


def _data_lines(path: str) -> list[tuple[int, str]]:
  """(1-based line number, text) of the non-blank, non-comment lines of a numeric list file."""
  out = []
  for lineno, line in enumerate(_text_lines(path), 1):
    text = line.split("#", 1)[0].strip()
    if text:
      out.append((lineno, text))
  return out


def _read_table(path: str, num_cols: int | None, allowed: Sequence[int], what: str) -> np.ndarray:
  """Reads a whitespace-separated integer table (np.loadtxt-compatible) with line-exact errors.

  Returns int32 ``[rows, num_cols]``; ``num_cols=None`` takes the first row's width.
  """
  base = os.path.basename(path)
  table = None
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # Empty-file warning: handled below.
      table = np.loadtxt(path, dtype=np.float64, ndmin=2)
  except ValueError:
    pass  # The slow path below names the offending line (UnicodeDecodeError included).
  ok = (
    table is not None
    and table.shape[0] > 0
    and (num_cols is None or table.shape[1] == num_cols)
    and bool(np.all(np.isin(table, allowed)))
  )
  if ok:
    return table.astype(np.int32)
  lines = _data_lines(path)
  if not lines:
    raise DatasetError(f"{path} is empty; expected one row of {what} per image")
  want = num_cols if num_cols is not None else len(lines[0][1].split())
  allowed_set = set(allowed)
  rows = []
  for lineno, text in lines:
    toks = text.split()
    if len(toks) != want:
      raise DatasetError(
        f"{base} line {lineno}: expected {want} {what} values, found {len(toks)} ({text[:80]!r}) in {path}"
      )
    for col, tok in enumerate(toks, 1):
      try:
        v = float(tok)
      except ValueError:
        raise DatasetError(
          f"{base} line {lineno}, column {col}: non-numeric value {tok!r} in {path}; "
          f"{what} values must be one of {sorted(allowed_set)}"
        ) from None
      if v not in allowed_set:
        raise DatasetError(
          f"{base} line {lineno}, column {col}: unknown {what} value {tok!r} in {path}; "
          f"expected one of {sorted(allowed_set)}"
        )
    rows.append([float(t) for t in toks])
  return np.array(rows, np.float64).astype(np.int32)  # Valid text np.loadtxt refused (e.g. a UTF-8 BOM).


def _read_paths(path: str) -> list[str]:
  """Image paths, one per line; trailing blank lines are ignored, blank lines inside are errors."""
  lines = [line.strip() for line in _text_lines(path)]
  while lines and not lines[-1]:
    lines.pop()
  for lineno, p in enumerate(lines, 1):
    if not p:
      raise DatasetError(f"{os.path.basename(path)} line {lineno}: empty image path in {path}")
  if not lines:
    raise DatasetError(f"{path} is empty; expected one image path (relative to ROOT/img) per line")
  return lines


def read_split(
  root: str, name: str, fold: int, split: str, *, num_aus: int | None = None, check_images: bool = True
) -> SplitData:
  """Reads the image list, labels and relation labels of ``split`` (train/test) of fold 1..3, or of fold 0 in
  OpenGraphAU's layout without folds (train/val/test).

  ``num_aus`` defaults to 12 for BP4D, 8 for DISFA, else the first label row's width. Relations come
  from NAME_train_AU_relation_foldK.txt when present (checked against the labels), else from labels.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if fold not in FOLDS + (NO_FOLDS,):
    raise ValueError(f"fold must be 1, 2 or 3 (or 0: a layout without folds), got {fold!r}")
  if split == "val" and fold != NO_FOLDS:
    raise ValueError(f"split 'val' exists only in the layout without folds (fold 0); fold {fold} has train/test")
  if not os.path.isdir(root):
    raise DatasetNotFoundError(f"dataset root {root} does not exist; {_prepare_hint(root, name)}")
  n = num_aus if num_aus is not None else _num_aus(name)
  img_file = list_file(root, name, fold, "img_path", split)
  label_file = list_file(root, name, fold, "label", split)
  _require_file(img_file, root, name)
  _require_file(label_file, root, name)
  paths = _read_paths(img_file)
  labels = _read_table(label_file, n, task.label_values(name), "AU label")
  if len(paths) != labels.shape[0]:
    raise DatasetError(
      f"{os.path.basename(img_file)} lists {len(paths)} images but {os.path.basename(label_file)} "
      f"has {labels.shape[0]} label rows; the two files must have one line per image "
      f"({img_file}, {label_file})"
    )
  n = labels.shape[1]
  relations = task.relation_labels(labels)
  rel_file = list_file(root, name, fold, "AU_relation", split)
  unlabelled = int(np.sum((labels != 0) & (labels != 1)))
  if unlabelled:
    logging.info(
      "%s: %d AU entries are not labelled (%s); they are left out of the losses and metrics",
      label_file,
      unlabelled,
      " or ".join(str(v) for v in task.label_values(name) if v not in (0, 1)),
    )
  if split == "train" and os.path.isfile(rel_file) and not unlabelled:  # (else the official file holds 2*9+y)
    rel = _read_table(rel_file, n * n, (0, 1, 2, 3), "AU relation")
    if rel.shape[0] != labels.shape[0]:
      raise DatasetError(
        f"{os.path.basename(rel_file)} has {rel.shape[0]} rows but {os.path.basename(label_file)} "
        f"has {labels.shape[0]} ({rel_file})"
      )
    bad = np.flatnonzero(np.any(rel != relations, axis=1))
    if bad.size:
      lineno = _data_lines(rel_file)[bad[0]][0]
      raise DatasetError(
        f"{os.path.basename(rel_file)} line {lineno}: relation labels disagree with "
        f"{os.path.basename(label_file)} (expected 2*label[j] + label[k] at column j*N + k); "
        f"{bad.size} row(s) differ. Regenerate it from the labels ({rel_file})"
      )
    relations = rel
  if check_images:
    img_dir = os.path.join(root, "img")
    missing = [(i + 1, p) for i, p in enumerate(paths) if not os.path.isfile(os.path.join(img_dir, p))]
    if missing:
      shown = ", ".join(f"{os.path.join(img_dir, p)} (line {ln})" for ln, p in missing[:_MAX_LISTED])
      raise DatasetNotFoundError(
        f"{len(missing)} of {len(paths)} images listed in {img_file} are missing under "
        f"{img_dir}: {shown}{' ...' if len(missing) > _MAX_LISTED else ''}; "
        f"{_prepare_hint(root, name)}"
      )
  return SplitData(
    paths=tuple(paths),
    labels=labels,
    relations=relations.astype(np.int32),
    name=name,
    fold=fold,
    split=split,
    img_list=img_file,
    root=root,
  )


def load_class_weights(root: str, name: str, fold: int, num_aus: int | None = None) -> np.ndarray:
  """Reads NAME_weight_foldK.txt: one row of N floats ``[N]`` (float64)."""
  path = list_file(root, name, fold, "weight")
  _require_file(path, root, name)
  lines = _data_lines(path)
  if len(lines) != 1:
    raise DatasetError(f"{path}: expected exactly one row of class weights, found {len(lines)}")
  lineno, text = lines[0]
  try:
    w = np.array([float(t) for t in text.split()])
  except ValueError:
    raise DatasetError(f"{os.path.basename(path)} line {lineno}: non-numeric class weight in {path}") from None
  n = num_aus if num_aus is not None else _num_aus(name, w.size)
  if w.size != n or not np.all(np.isfinite(w)) or np.any(w <= 0):
    raise DatasetError(f"{os.path.basename(path)} line {lineno}: expected {n} positive class weights, got {text!r}")
  return w


# ----------------------------------------------------------------------------- the dataset of a run


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset in the official layout under ``root``: list files ``ROOT/list/NAME_*_foldK.txt``, images ``ROOT/img``.

  ``au_names`` are its label columns (``task.au_names`` of the config): reading a split checks their number.
  """

  root: str
  name: str
  au_names: tuple[str, ...]

  @property
  def num_aus(self) -> int:
    """N."""
    return len(self.au_names)

  def list_file(self, fold: int, what: str, split: str = "train") -> str:
    """Path of one of its list files (``list_file``)."""
    return list_file(self.root, self.name, fold, what, split)

  def check(self, folds: Iterable[int], splits: Sequence[str] = ("train", "test")) -> None:
    """Raises DatasetNotFoundError naming the expected folder and files of ``folds``, and how to prepare them."""
    root, name = self.root, self.name
    missing = [
      p
      for k in folds
      for split in splits
      for what in ("img_path", "label")
      if not os.path.isfile(p := self.list_file(k, what, split))
    ]
    if not missing:
      return
    where = f"the folder {root} does not exist" if not os.path.isdir(root) else f"{root} exists but is incomplete"
    raise DatasetNotFoundError(
      f"dataset {name!r} not found (config key 'dataset.root'): {where}; missing {missing[0]}"
      f"{f' and {len(missing) - 1} more list file(s)' if len(missing) > 1 else ''}. Expected the official "
      f"layout: {root}/img/<subject>/... and {root}/list/{name}_{{train,test}}_{{img_path,label}}_fold<k>.txt "
      f"(OpenGraphAU's, fold 0: {name}_{{train,val,test}}_{{img_path,label}}.txt), as "
      "the official tool/ scripts write them (BP4D/DISFA need a licence from their authors). From the raw "
      f"release: python -m data_pipelines.build {name.lower()} --manual_dir=RAW_{name}, then python -m "
      f"data_pipelines.export {root} --dataset {name.lower()}. Point --config.dataset.root at the folder, or try "
      "the pipeline on generated data: --config=configs/synthetic.py (or --config.dataset.synthetic.enabled=True)."
    )

  def split(self, fold: int, split: str, *, check_images: bool = True) -> SplitData:
    """``read_split`` of ``split`` (train/test) of ``fold``; a label row without N = len(au_names) values is a
    DatasetError naming its line."""
    return read_split(self.root, self.name, fold, split, num_aus=self.num_aus, check_images=check_images)

  def class_weights(self, fold: int, source: str, train: SplitData) -> np.ndarray:
    """Class weights ``[N]`` float32 of ``fold``: ``task.class_weights`` of ``train``'s labels ('labels'), or the
    dataset's NAME_weight_foldK.txt ('file')."""
    if source == "labels":
      return task.class_weights(train.labels, au_names=self.au_names)
    if source == "file":
      return load_class_weights(self.root, self.name, fold, self.num_aus).astype(np.float32)
    raise ValueError(f"config key 'optim.class_weights' = {source!r}; use 'labels' or 'file'")

  def fold_data(self, fold: int, eval_split: str, class_weights: str) -> FoldData:
    """``fold``'s training split, its ``eval_split`` and the class weights from ``class_weights`` ('labels' or
    'file'), once the list files of both splits are found (:meth:`check`)."""
    self.check([fold], ("train", eval_split))
    train = self.split(fold, "train")
    return FoldData(fold, train, self.split(fold, eval_split), self.class_weights(fold, class_weights, train))


def from_config(config: ml_collections.ConfigDict, workdir: str) -> Dataset:
  """The dataset ``config.dataset`` names: the folder ``dataset.root``, or, when ``dataset.synthetic.enabled``, the
  synthetic set in ``dataset.synthetic.cache_dir`` ('' = ``<workdir>/data``), generated there on first use."""
  d = config.dataset
  names = task.au_names(d)
  if not d.synthetic.enabled:
    return Dataset(os.path.abspath(os.path.expanduser(d.root)), d.name, names)
  s = d.synthetic
  cache = os.path.expanduser(s.cache_dir) if s.cache_dir else os.path.join(workdir, "data")
  generate = functools.partial(
    synthetic.ensure_generated,
    cache,
    name=d.name,
    num_subjects=s.num_subjects,
    frames_per_subject=s.frames_per_subject,
    image_size=s.image_size,
    seed=s.seed,
    aus=[task.au_number(a) for a in names],
  )
  if jax.process_count() > 1:
    if jax.process_index() == 0:  # one writer; the others wait, then find it in the cache
      generate()
    multihost_utils.sync_global_devices("synthetic dataset generated")
  return Dataset(generate(), d.name, names)
