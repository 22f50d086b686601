"""Writes a built BP4D/DISFA TFDS dataset in the official ME-GraphAU layout (img/ and list/), list for list.

CLI: ``python -m data_pipelines.export OUT --dataset bp4d [--config default] [--data_dir DIR]`` or
``python -m data_pipelines.export OUT --builder_dir DATA_DIR/bp4d/CONFIG/1.0.0`` (e.g. for a JSON config). The
result trains with ``megraph_jax.data.datasets.read_split(OUT, "BP4D", fold, split)`` or the
official code. The reverse direction needs no import step: ``read_split`` reads an officially prepared
folder directly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import build as common
from megraph_jax import task
from megraph_jax.data.datasets import list_file

NAMES = {"bp4d": "BP4D", "disfa": "DISFA"}


def _write_image(path: str, encoded: bytes, stored_format: str) -> None:
  """Writes encoded image bytes to ``path``, re-encoding when the extension asks for another format."""
  ext = os.path.splitext(path)[1].lower()
  want = "png" if ext == ".png" else "jpeg"
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if want == stored_format:
    with open(path, "wb") as f:
      f.write(encoded)
    return
  import io  # pylint: disable=g-import-not-at-top

  from PIL import Image  # pylint: disable=g-import-not-at-top

  img = Image.open(io.BytesIO(encoded)).convert("RGB")
  img.save(path, **({"quality": 95} if want == "jpeg" else {}))


def export_official(
  builder: tfds.core.DatasetBuilder, out_root: str, *, unlabelled_as: int | None = None, write_images: bool = True
) -> dict[str, int]:
  """Writes ``out_root/img/<path>`` and the 24 list files of the official layout; returns split sizes.

  Lists follow the official tools: test of fold k = one subject group, train = the other two in the
  official order; labels ``%d``; ``NAME_train_AU_relation_foldK.txt`` = 2*y_j + y_k; ``NAME_weight_foldK.txt``
  = ``megraph_jax.task.class_weights`` of the training labels (tab-separated ``%f``): 1/rate normalised to
  sum N, the rate of each AU taken over its 0/1 entries only, so BP4D's 9 (not coded) counts neither as
  positive nor as negative (the official tool's ``label > 0`` counts it positive). By default the 9 stays in the
  label lists, as the official tool writes them; ``unlabelled_as`` (0 or 1) replaces it there and in the
  weights, for code that cannot mask it (e.g. the official PyTorch training, whose loss reads 9 as a label).
  """
  name = NAMES.get(builder.name)
  if name is None:
    raise ValueError(f"export_official: expected a bp4d or disfa builder, got {builder.name!r}")
  if unlabelled_as not in (None, 0, 1):
    raise ValueError(f"unlabelled_as must be None, 0 or 1, got {unlabelled_as!r}")
  stored = builder.info.features["image"].encoding_format or "png"
  paths: list[list[str]] = [[], [], []]
  labels: list[np.ndarray] = []
  for part in range(3):
    ds = builder.as_dataset(
      split=common.part_split_name(part), shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    ys = []
    for ex in tfds.as_numpy(ds):
      rel = ex["path"].decode()
      if write_images:
        _write_image(os.path.join(out_root, "img", rel), ex["image"], stored)
      paths[part].append(rel)
      ys.append(ex["label"])
    labels.append(np.array(ys, np.int64).reshape(-1, builder.info.features["label"].shape[0]))
  if unlabelled_as is not None:
    labels = [np.where(y == task.UNLABELLED, unlabelled_as, y) for y in labels]
  lst = os.path.join(out_root, "list")
  os.makedirs(lst, exist_ok=True)
  sizes = {}
  for k in (1, 2, 3):
    for split in common.SPLITS:
      idx = common.fold_parts(k, split)
      p = [q for i in idx for q in paths[i]]
      y = np.concatenate([labels[i] for i in idx])
      with open(list_file(out_root, name, k, "img_path", split), "w") as f:
        f.write("".join(q + "\n" for q in p))
      np.savetxt(list_file(out_root, name, k, "label", split), y, fmt="%d", delimiter=" ")
      sizes[f"fold{k}_{split}"] = len(p)
      if split == "train":
        rel = task.relation_labels(y, keep_unlabelled=True)  # as the official tool: 2*y_j + y_k, also for a 9
        np.savetxt(list_file(out_root, name, k, "AU_relation", split), rel, fmt="%d")
        try:
          w = task.class_weights(y, dtype=np.float64)
        except ValueError as e:
          raise ValueError(f"fold {k} training labels ({len(p)} frames): {e}") from None
        np.savetxt(list_file(out_root, name, k, "weight"), w[None], fmt="%f", delimiter="\t")
  return sizes


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("out", help="folder to write img/ and list/ into")
  p.add_argument("--dataset", choices=sorted(NAMES), help="the built TFDS dataset")
  p.add_argument("--config", default=None, help="builder config name (default: the builder's default)")
  p.add_argument("--data_dir", default=None, help="TFDS data dir it was built in (default: ~/tensorflow_datasets)")
  p.add_argument("--builder_dir", default=None, help="instead of --dataset/--config: the built version folder")
  p.add_argument(
    "--unlabelled-as",
    type=int,
    choices=(0, 1),
    default=None,
    help="write BP4D's 9 (not coded) as this value (default: keep 9 as the official lists; our training "
    "leaves it out of the losses, class weights and metrics)",
  )
  p.add_argument("--lists-only", action="store_true", help="write list/ only, no images")
  a = p.parse_args(argv)
  if (a.dataset is None) == (a.builder_dir is None):
    p.error("give either --dataset (with --config/--data_dir) or --builder_dir")
  try:
    if a.builder_dir:
      if not os.path.isfile(os.path.join(a.builder_dir, "dataset_info.json")):
        raise FileNotFoundError(
          f"{a.builder_dir} holds no built dataset (no dataset_info.json); give the version "
          "folder, e.g. DATA_DIR/bp4d/default/1.0.0"
        )
      builder = tfds.builder_from_directory(a.builder_dir)
    else:
      importlib.import_module(f"data_pipelines.{a.dataset}")  # Registers the builder.
      builder = tfds.builder(a.dataset, config=a.config, data_dir=a.data_dir)
    if not builder.is_prepared():
      raise FileNotFoundError(
        f"{builder.name} ({builder.builder_config.name}) is not built in {builder.data_dir}; "
        f"run `python -m data_pipelines.build {builder.name} --manual_dir=...` first"
      )
    sizes = export_official(builder, a.out, unlabelled_as=a.unlabelled_as, write_images=not a.lists_only)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {a.out}/list ({', '.join(f'{k}: {v}' for k, v in sizes.items())})", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
