"""``python -m megraph_jax.convert CHECKPOINT OUT_DIR``: any checkpoint -> a megraph-jax model directory.

CHECKPOINT is an official ME-GraphAU ``.pth`` (backbone, stage and number of AUs read from its tensor names)
or a training stage directory (``<workdir>/fold1/stage1``, its ``best/`` or ``checkpoints/``). OUT_DIR gets
``state/`` (orbax) and ``model.json`` (:class:`megraph_jax.model_factory.ModelSpec`), which training
(``config.init_from``), ``python -m megraph_jax.predict`` and :func:`megraph_jax.loader.load` read.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from megraph_jax import loader
from megraph_jax.errors import CheckpointError
from megraph_jax.model_factory import METRICS
from megraph_jax.models.backbones import BACKBONES


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m megraph_jax.convert", description=__doc__.splitlines()[0])
  parser.add_argument("checkpoint", help="official .pth ({'state_dict': ...}) or a training stage directory")
  parser.add_argument("out", help="output directory")
  parser.add_argument("--backbone", default=None, choices=BACKBONES, help=".pth: default read from the tensors")
  parser.add_argument("--num-aus", type=int, default=None, help=".pth: checked against the checkpoint")
  parser.add_argument("--stage", type=int, choices=(1, 2), default=None, help=".pth: checked against the checkpoint")
  parser.add_argument("--neighbor-num", type=int, default=None, help=".pth: K of the stage-1 FGG (BP4D 4, DISFA 3)")
  parser.add_argument("--metric", default=None, choices=METRICS, help=".pth: FGG similarity (default dots)")
  parser.add_argument("--img-size", type=int, default=None, help=".pth: input side (default 224)")
  parser.add_argument("--au-names", default=None, help="comma-separated, e.g. AU1,AU2,... (stored in model.json)")
  args = parser.parse_args(argv)
  au_names = args.au_names.split(",") if args.au_names else None
  official = {
    k: v
    for k, v in dict(
      backbone=args.backbone,
      num_aus=args.num_aus,
      stage=args.stage,
      neighbor_num=args.neighbor_num,
      metric=args.metric,
      img_size=args.img_size,
      au_names=au_names,
    ).items()
    if v is not None
  }
  try:
    model, spec = loader.load(args.checkpoint, **(official if os.path.isfile(args.checkpoint) else {}))
    if au_names is not None:
      spec = spec.replace(au_names=au_names)
  except (CheckpointError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = loader.save(model, args.out, spec=spec)
  head = "baseline" if spec.head == "baseline" else f"stage {spec.stage}" + ("" if spec.use_fgg else ", no FGG")
  print(f"wrote {out} ({head}, {spec.backbone}, {spec.num_aus} AUs)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
