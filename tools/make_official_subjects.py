"""Writes tests/data/official_subjects.json: the subject order of ME-GraphAU's official list files.

The BP4D and DISFA tests compare the fold split this project builds (``data_pipelines.*.PARTS``) with the subjects,
in order, of the official ``data/<DATASET>/list/<DATASET>_<split>_img_path_fold<k>.txt`` (first path components,
first appearance). Those files are 0.6-1.6 MB each; what the comparison needs is a few hundred bytes, shipped here
so that the comparison runs everywhere (CI included), with the file's git blob hash and line count as provenance.

  python tools/make_official_subjects.py /path/to/ME-GraphAU [--commit HASH]

With MEGRAPHAU_OFFICIAL=/path/to/ME-GraphAU the tests also check the shipped file against that checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "data", "official_subjects.json")
DATASETS = ("BP4D", "DISFA")
KEYS = tuple(f"{split}_fold{k}" for split in ("train", "test") for k in (1, 2, 3))


def list_path(checkout: str, dataset: str, key: str) -> str:
  split, fold = key.split("_")
  return os.path.join(checkout, "data", dataset, "list", f"{dataset}_{split}_img_path_{fold}.txt")


def read_list(path: str) -> dict:
  """Subjects in order of first appearance, the line count and git's blob hash of one official list file."""
  with open(path, "rb") as f:
    data = f.read()
  lines = [line for line in data.decode().splitlines() if line.strip()]
  return {
    "subjects": list(dict.fromkeys(line.split("/")[0] for line in lines)),
    "lines": len(lines),
    "git_blob": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
  }


def read_checkout(checkout: str) -> dict[str, dict[str, dict]]:
  return {d: {k: read_list(list_path(checkout, d, k)) for k in KEYS} for d in DATASETS}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("official", help="an ME-GraphAU checkout (https://github.com/CVI-SZU/ME-GraphAU)")
  p.add_argument("--commit", default="", help="its commit (default: git rev-parse HEAD in the checkout)")
  p.add_argument("--out", default=OUT)
  a = p.parse_args()
  commit = (
    a.commit
    or subprocess.run(
      ["git", "-C", a.official, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
  )
  out = {"source": "https://github.com/CVI-SZU/ME-GraphAU", "official_commit": commit, **read_checkout(a.official)}
  with open(a.out, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
