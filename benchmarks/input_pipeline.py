"""tf.data training input throughput (img/s per CPU core), before and after the device augmentation, in one run.

Usage: python benchmarks/input_pipeline.py [--root DIR] [--batch 64] [--batches 20] [--rounds 2] [--cores N]
         [--image-size 256] [--crop 224] [--no-jitter] [--backbone resnet50] [--step-batch 8] [--steps 3] [--no-step]

Without --root, a synthetic set of 256 px JPEG faces is written in the official layout (img/ + list/,
as the aligned BP4D crops) under a temporary directory. Two training pipelines are timed over it,
alternating, ``--rounds`` times each (the best round counts: other jobs on the machine only slow a round down),
after one warm-up batch each:

- previous: the pipeline before ``megraph_jax.data.device_augment`` (commit afecfe6): decode, resize (always),
  random crop, flip, /255, colour jitter and ImageNet normalisation on the CPU, float32 batches. Its map is kept
  here (``previous_load``) only to time it; its first batch is checked against the new one below.
- new: ``megraph_jax.data.input_pipeline.create_train_dataset``: decode, resize (skipped for images of that size
  already), random crop, flip; uint8 batches with the jitter draws. The jitter and the normalisation run in the
  jitted train step on the device (``device_augment.model_images``; not timed here).

``--cores N`` runs on N of the cores this process may use (CPU affinity, TensorFlow's and tf.data's thread pools);
the rate per core is the rate over the usable cores. From it, the cores a host needs to feed the reference rates of
the train step on one H200 (batch 64, stage 2, bf16): rates per core scale about linearly with cores while decoding
dominates (measure with --cores on the host to check). Unless --no-step, the fp32 train step is then timed on this
machine (``benchmarks/throughput.py``) and the new pipeline's rate is compared with it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from megraph_jax import optional, task
from megraph_jax.data import datasets, input_pipeline, synthetic

# The train step's rates on one H200 (batch 64, stage 2, bf16): measured (issue "GPU, first-class") and targeted.
REFERENCE_RATES = (
  ("ResNet-50 train step, H200 bf16, today", 3469),
  ("ResNet-50 train step, H200 bf16, target", 6000),
  ("Swin-B train step, H200 bf16, today", 1411),
  ("Swin-B train step, H200 bf16, target", 2500),
)


def use_cores(n: int | None) -> int:
  """Restricts this process to ``n`` of its usable cores (all: None) and sizes TensorFlow's pools; the count used."""
  allowed = sorted(os.sched_getaffinity(0))
  if n is not None:
    if not 1 <= n <= len(allowed):
      raise SystemExit(f"--cores {n}: this process may use {len(allowed)} cores ({allowed})")
    os.sched_setaffinity(0, allowed[:n])
  cores = len(os.sched_getaffinity(0))
  tf = optional.tensorflow()
  tf.config.threading.set_inter_op_parallelism_threads(cores)
  tf.config.threading.set_intra_op_parallelism_threads(cores)
  return cores


def _threaded(ds, cores: int):
  """``ds`` on a private tf.data thread pool of ``cores`` threads, autotuned for that many cores."""
  tf = optional.tensorflow()
  opts = tf.data.Options()
  opts.threading.private_threadpool_size = cores
  opts.autotune.cpu_budget = cores
  return ds.with_options(opts)


def previous_load(image_size: int, crop: int, color_jitter: bool):
  """The per-example map of the training pipeline before the device augmentation (to time it; not used to train)."""
  tf = optional.tensorflow()
  mean, std = tf.constant(task.IMAGENET_MEAN, tf.float32), tf.constant(task.IMAGENET_STD, tf.float32)

  def load(ex):
    img = tf.io.decode_image(tf.io.read_file(ex["path"]), channels=3, expand_animations=False)
    img.set_shape([None, None, 3])
    shape = tf.shape(img)
    h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    short, size = tf.minimum(h, w), tf.constant(image_size, tf.float64)
    nh = tf.cast(tf.where(h <= w, size, tf.floor(size * h / short)), tf.int32)
    nw = tf.cast(tf.where(h <= w, tf.floor(size * w / short), size), tf.int32)
    img = tf.image.resize(img, tf.stack([nh, nw]), method="bilinear", antialias=True)
    a = ex["aug"]
    oy = tf.minimum(tf.cast(a[0] * tf.cast(nh - crop + 1, tf.float32), tf.int32), nh - crop)
    ox = tf.minimum(tf.cast(a[1] * tf.cast(nw - crop + 1, tf.float32), tf.int32), nw - crop)
    img = img[oy : oy + crop, ox : ox + crop]
    img = tf.cond(a[2] < 0.5, lambda: img[:, ::-1], lambda: img) / 255.0
    if color_jitter:
      for k in range(3):
        f, is_con, is_sat = ex["jitter"][k, 0], ex["jitter"][k, 1], ex["jitter"][k, 2]
        gray = tf.tensordot(img, tf.constant([0.299, 0.587, 0.114], tf.float32), axes=[[2], [0]])[..., None]
        img = tf.clip_by_value(f * img + (1.0 - f) * (is_sat * gray + is_con * tf.reduce_mean(gray)), 0.0, 1.0)
    img = tf.ensure_shape((img - mean) / std, [crop, crop, 3])
    return {"image": img, "label": ex["label"], "relation": ex["relation"]}

  return load


def make_pipeline(which: str, data, root: str, *, batch: int, image_size: int, crop: int, color_jitter: bool, epoch):
  """The 'previous' or 'new' training pipeline of one epoch (tf.data of batches)."""
  tf = optional.tensorflow()
  kw = dict(batch_size=batch, image_size=image_size, crop_size=crop, seed=0, epoch=epoch)
  if which == "new":
    return input_pipeline.create_train_dataset(data, root=root, color_jitter=color_jitter, **kw).dataset
  columns, _, _ = input_pipeline._train_columns(  # pylint: disable=protected-access
    data, root, batch, image_size, crop, 0, epoch, 0, 1, 0
  )
  ds = tf.data.Dataset.from_tensor_slices(columns)
  ds = ds.map(previous_load(image_size, crop, color_jitter), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def time_pipeline(ds, *, batch: int, batches: int) -> tuple[float, int]:
  """(images per second, batches timed) over up to ``batches`` batches after a warm-up one."""
  it = iter(ds.as_numpy_iterator())
  next(it)  # warm-up: graph tracing, thread pools, first files
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
    raise ValueError(f"fewer than 2 batches of {batch} in fold 1's training split; lower --batch")
  return n * batch / dt, n


def check_same_images(data, root: str, *, batch: int, image_size: int, crop: int, color_jitter: bool) -> float:
  """max |previous batch - model_images(new batch)| over the first batch (model input units)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from megraph_jax.data import device_augment  # pylint: disable=import-outside-toplevel

  kw = dict(batch=batch, image_size=image_size, crop=crop, color_jitter=color_jitter, epoch=0)
  old = next(make_pipeline("previous", data, root, **kw).as_numpy_iterator())
  new = next(make_pipeline("new", data, root, **kw).as_numpy_iterator())
  got = jax.jit(device_augment.model_images)(new["image"], new.get("jitter"))
  return float(np.abs(np.asarray(got) - old["image"]).max())


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default=None, help="dataset in the official layout (default: synthetic, generated)")
  p.add_argument("--name", default="BP4D", help="dataset name of the list files (BP4D or DISFA)")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--batches", type=int, default=20, help="batches timed per round after the warm-up one")
  p.add_argument("--rounds", type=int, default=2, help="timed rounds per pipeline, alternating (the best counts)")
  p.add_argument("--cores", type=int, default=None, help="run on this many of the usable cores (default: all)")
  p.add_argument("--image-size", type=int, default=256, help="resize before the random crop (official 256)")
  p.add_argument("--crop", type=int, default=224)
  p.add_argument("--no-jitter", action="store_true", help="leave out the colour jitter")
  p.add_argument("--backbone", default="resnet50")
  p.add_argument("--step-batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--no-step", action="store_true", help="time the input pipelines only")
  args = p.parse_args(argv)
  cores = use_cores(args.cores)
  jitter = not args.no_jitter

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
    data = datasets.read_split(root, args.name, 1, "train")
    kw = dict(batch=args.batch, image_size=args.image_size, crop=args.crop, color_jitter=jitter)
    best = {"previous": (0.0, 0), "new": (0.0, 0)}
    for r in range(args.rounds):
      for which in best:
        ds = _threaded(make_pipeline(which, data, root, epoch=r, **kw), cores)
        best[which] = max(best[which], time_pipeline(ds, batch=args.batch, batches=args.batches))
    diff = check_same_images(data, root, **kw)

  print(
    f"training input, {args.image_size} px -> {args.crop} px crops, batch {args.batch}, colour jitter "
    f"{'on' if jitter else 'off'}, {cores} usable CPU core(s) (best of {args.rounds} rounds of {args.batches} batches):"
  )
  for which, what in (("previous", "all on the CPU, float32"), ("new", "uint8, jitter+normalise on the device")):
    rate = best[which][0]
    print(f"  {which:8s} ({what:38s}): {rate:7.1f} img/s = {rate / cores:6.1f} img/s per core")
  old, new = best["previous"][0], best["new"][0]
  print(f"  new / previous: {new / old:.2f}x; first batch as model inputs, max |previous - new|: {diff:.2g}")
  for label, rate in REFERENCE_RATES:
    need_old, need_new = (math.ceil(rate / (r / cores)) for r in (old, new))
    print(f"a host needs ~{need_new} cores (previous: ~{need_old}) to feed {rate:,} img/s ({label})")
  sys.stdout.flush()
  if args.no_step:
    return
  import throughput  # pylint: disable=import-outside-toplevel  # benchmarks/throughput.py

  train, _ = throughput.bench_ours(args.backbone, 2, args.step_batch, args.steps)
  print(f"train step ({args.backbone}, stage 2, batch {args.step_batch}, fp32, this machine): {train:7.2f} img/s")
  print(f"new input / train-step consumption: {new / train:.1f}x")


if __name__ == "__main__":
  main()
