"""Where the data of a config lives: the official on-disk layout, or the synthetic set generated on first use."""

from __future__ import annotations

import functools
import os
import re

import jax
import ml_collections
import numpy as np


def au_numbers(au_names) -> list[int]:
  """'AU12' -> 12 for each name (the synthetic generator takes AU numbers)."""
  out = []
  for name in au_names:
    m = re.fullmatch(r"AU(\d+)", str(name))
    if not m:
      raise ValueError(f"config key 'dataset.au_names': {name!r} is not of the form AU<number>")
    out.append(int(m.group(1)))
  return out


def list_file(root: str, name: str, fold: int, split: str, what: str = "img_path") -> str:
  """``ROOT/list/NAME_{split}_{what}_fold{k}.txt`` (official layout)."""
  return os.path.join(root, "list", f"{name}_{split}_{what}_fold{fold}.txt")


def dataset_root(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The dataset folder; generates the synthetic set first when ``dataset.synthetic.enabled``."""
  d = config.dataset
  if d.synthetic.enabled:
    from data_pipelines import synthetic  # pylint: disable=import-outside-toplevel
    s = d.synthetic
    cache = os.path.expanduser(s.cache_dir) if s.cache_dir else os.path.join(workdir, "data")
    generate = functools.partial(synthetic.ensure_generated, cache, name=d.name, num_subjects=s.num_subjects,
                                 frames_per_subject=s.frames_per_subject, image_size=s.image_size, seed=s.seed,
                                 aus=au_numbers(d.au_names))
    if jax.process_count() == 1:
      return generate()
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    if jax.process_index() == 0:  # one writer; the others wait, then find it in the cache
      generate()
    multihost_utils.sync_global_devices("synthetic dataset generated")
    return generate()
  return os.path.abspath(os.path.expanduser(d.root))


class DatasetNotFoundError(FileNotFoundError):
  """The configured dataset folder lacks the official list files; the message says how to prepare them."""


def check_dataset(root: str, name: str, folds) -> None:
  """Raises DatasetNotFoundError naming the expected folder and files, and how to prepare them."""
  missing = [list_file(root, name, k, split, what) for k in folds for split in ("train", "test")
             for what in ("img_path", "label") if not os.path.isfile(list_file(root, name, k, split, what))]
  if not missing:
    return
  where = f"the folder {root} does not exist" if not os.path.isdir(root) else f"{root} exists but is incomplete"
  raise DatasetNotFoundError(
      f"dataset {name!r} not found (config key 'dataset.root'): {where}; missing {missing[0]}"
      f"{f' and {len(missing) - 1} more list file(s)' if len(missing) > 1 else ''}. Expected the official "
      f"layout: {root}/img/<subject>/... and {root}/list/{name}_{{train,test}}_{{img_path,label}}_fold<k>.txt, as "
      "the official tool/ scripts write them (BP4D/DISFA need a licence from their authors). From the raw "
      f"release: python -m data_pipelines.build {name.lower()} --manual_dir=RAW_{name}, then python -m "
      f"data_pipelines.export {root} --dataset {name.lower()}. Point --config.dataset.root at the folder, or try "
      "the pipeline on generated data: --config=configs/synthetic.py (or --config.dataset.synthetic.enabled=True).")


def load_split(root: str, config: ml_collections.ConfigDict, fold: int, split: str):
  """``input_pipeline.read_split`` with the number of label columns checked against the config."""
  from data_pipelines import input_pipeline  # pylint: disable=import-outside-toplevel
  data = input_pipeline.read_split(root, config.dataset.name, fold, split, num_aus=config.dataset.num_aus)
  n = np.asarray(data.labels).shape[1]
  if n != config.dataset.num_aus:
    raise ValueError(f"{list_file(root, config.dataset.name, fold, split, 'label')}: {n} AU columns but "
                     f"config key 'dataset.num_aus' = {config.dataset.num_aus}; set it (and dataset.au_names)")
  return data
