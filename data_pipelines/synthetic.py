"""CLI of the synthetic AU-face set: ``python -m data_pipelines.synthetic OUT [--name BP4D] [--num-subjects 9] ...``.

Writes ``megraph_jax.data.synthetic.generate``'s set (procedural faces in the official ``img/`` + ``list/``
layout, 3 subject-independent folds) to OUT. Training generates it by itself on first use
(``configs/synthetic.py``); this command is for looking at it or using it elsewhere.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from megraph_jax.data.synthetic import generate


def main(argv: Sequence[str] | None = None) -> None:
  """CLI entry point."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("out", help="dataset root to write (gets img/ and list/)")
  p.add_argument("--name", default="BP4D", help="list-file prefix and layout: BP4D or DISFA")
  p.add_argument("--num-subjects", type=int, default=9)
  p.add_argument("--frames-per-subject", type=int, default=40)
  p.add_argument("--image-size", type=int, default=128)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--aus", default=None, help="comma-separated AU numbers (default: the dataset's AUs)")
  a = p.parse_args(argv)
  aus = [int(v) for v in a.aus.split(",")] if a.aus else None
  root = generate(
    a.out,
    name=a.name,
    num_subjects=a.num_subjects,
    frames_per_subject=a.frames_per_subject,
    image_size=a.image_size,
    seed=a.seed,
    aus=aus,
  )
  print(f"wrote {a.num_subjects * a.frames_per_subject} images and 3 folds of lists to {root}", file=sys.stderr)


if __name__ == "__main__":
  main()
