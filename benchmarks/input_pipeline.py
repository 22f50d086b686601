"""tf.data input throughput (img/s) next to the train step's consumption rate, measured in one run.

Usage: python benchmarks/input_pipeline.py [--root DIR] [--batch 64] [--batches 20] [--image-size 256]
         [--crop 224] [--backbone resnet50] [--step-batch 8] [--steps 3] [--no-step]

Without --root, a synthetic set of 256 px JPEG faces is written in the official layout (img/ + list/,
as the aligned BP4D crops) under a temporary directory. The pipeline is the training one
(``megraph_jax.data.input_pipeline.create_train_dataset``: decode, resize, random crop, flip, colour
jitter, normalise, batch, prefetch); it is timed alone, after one warm-up batch. The train step
(stage 2, fp32, forward + backward + AdamW, ``benchmarks/throughput.py``) is then timed on this same
machine, and the ratio input/step is printed: the input pipeline keeps up when it is well above 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megraph_jax.data import datasets, input_pipeline, synthetic  # pylint: disable=wrong-import-position


def input_throughput(
  root: str, name: str, *, batch: int, batches: int, image_size: int, crop: int, color_jitter: bool = True
) -> tuple[float, int]:
  """(images per second, batches timed) of one training epoch's pipeline over ``root``."""
  data = datasets.read_split(root, name, 1, "train")
  ds = input_pipeline.create_train_dataset(
    data, root=root, batch_size=batch, image_size=image_size, crop_size=crop, seed=0, epoch=0, color_jitter=color_jitter
  )
  it = iter(ds.as_numpy_iterator())
  first = next(it)  # warm-up: graph tracing, thread pools, first files
  assert first["image"].shape == (batch, crop, crop, 3), first["image"].shape
  n = 0
  t0 = time.perf_counter()
  for _ in range(batches):
    try:
      next(it)
    except StopIteration:
      break
    n += 1
  dt = time.perf_counter() - t0
  if n == 0:
    raise ValueError(f"{root}: fewer than 2 batches of {batch} in fold 1's training split; lower --batch")
  return n * batch / dt, n


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default=None, help="dataset in the official layout (default: synthetic, generated)")
  p.add_argument("--name", default="BP4D", help="dataset name of the list files (BP4D or DISFA)")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--batches", type=int, default=20, help="batches timed after the warm-up one")
  p.add_argument("--image-size", type=int, default=256, help="resize before the random crop (official 256)")
  p.add_argument("--crop", type=int, default=224)
  p.add_argument("--no-jitter", action="store_true", help="leave out the colour jitter")
  p.add_argument("--backbone", default="resnet50")
  p.add_argument("--step-batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--no-step", action="store_true", help="time the input pipeline only")
  args = p.parse_args(argv)

  with tempfile.TemporaryDirectory() as tmp:
    root = args.root
    if root is None:
      root = os.path.join(tmp, "BP4D")
      per_subject = -(-(args.batch * (args.batches + 1) * 3) // (2 * 9))  # fold 1 trains on 6 of 9 subjects
      t0 = time.perf_counter()
      synthetic.generate(
        root, name=args.name, num_subjects=9, frames_per_subject=per_subject, image_size=args.image_size
      )
      print(f"wrote {9 * per_subject} synthetic {args.image_size} px faces in {time.perf_counter() - t0:.0f} s")
    rate, n = input_throughput(
      root,
      args.name,
      batch=args.batch,
      batches=args.batches,
      image_size=args.image_size,
      crop=args.crop,
      color_jitter=not args.no_jitter,
    )
  print(
    f"input pipeline: {rate:7.1f} img/s  ({n} batches of {args.batch}, {args.image_size} px -> {args.crop} "
    f"px crops, colour jitter {'off' if args.no_jitter else 'on'}, {os.cpu_count()} CPU cores)",
    flush=True,
  )
  if args.no_step:
    return
  import throughput  # pylint: disable=import-outside-toplevel  # benchmarks/throughput.py

  train, _ = throughput.bench_ours(args.backbone, 2, args.step_batch, args.steps)
  print(f"train step ({args.backbone}, stage 2, batch {args.step_batch}, fp32): {train:7.2f} img/s")
  print(f"input / train-step consumption: {rate / train:.1f}x")


if __name__ == "__main__":
  main()
