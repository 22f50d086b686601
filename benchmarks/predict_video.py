"""Prediction speed on a video, end to end, next to the model alone and decoding alone, in one run.

Usage: python benchmarks/predict_video.py [--frames 240] [--faces 1] [--backbone resnet50] [--batch 8]
         [--simple-frames 48] [--official PATH_TO_ME-GraphAU] [--memory 48]

A synthetic 640x360 video (``megraph_jax.synthetic_video``; no real data) is predicted by a stage-2 model with
random weights (timing does not depend on them), on the default JAX device (CPU here; a GPU when present):
  * decode: reading the frames (OpenCV) and nothing else;
  * end to end: ``Predictor.iter_predict`` (decode, MTCNN detection / ONet tracking, alignment, model) with every
    row written to a CSV file, as the CLI does; busy seconds per stage (stages overlap in threads, so they may sum
    to more than the wall time);
  * model only: the same aligned crops, already transformed, through the jitted model at the same batch size;
  * simple path: the same predictor one stage after another with full detection on every frame (the behaviour
    before the pipeline), on the first ``--simple-frames`` frames;
  * official: the official ME-GraphAU PyTorch model (``--official``), eval mode, on the same crops and batch.
``--memory N`` also runs the CLI on an N-frame and a 10N-frame video in subprocesses and reports their peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from megraph_jax import loader, media, synthetic_video
from megraph_jax.model_factory import ModelSpec, build
from megraph_jax.predict import Predictor
from megraph_jax.records import RecordWriter


def _end_to_end(pr: Predictor, video: str, out_csv: str, max_frames: int | None = None):
  crops, frames = [], set()
  t0 = time.perf_counter()
  with open(out_csv, "w", newline="") as f:
    writer = RecordWriter(f, "csv", pr.au_names)
    for p in pr.iter_predict(video, max_frames=max_frames):
      frames.add(p.frame)
      if p.crop is not None:
        crops.append(p.crop)
        p.crop = None
      with pr.times("write"):
        writer.write(p)
    writer.close()
  return len(frames), time.perf_counter() - t0, crops


def _official_fps(path: str, x: np.ndarray, batch: int, faces_per_frame: float) -> float:
  import torch  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
  from check_official_parity import _official_model  # pylint: disable=import-outside-toplevel
  from make_golden import _CpuAsDevice0  # pylint: disable=import-outside-toplevel

  net = _official_model(path, 2, "resnet50", 12, 4).eval()
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  with torch.no_grad(), _CpuAsDevice0(torch):
    net(xt[:batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(xt) - batch + 1, batch):
      net(xt[i : i + batch])
    n = (len(xt) // batch) * batch
  return n / (time.perf_counter() - t0) / faces_per_frame


def _peak_rss_mib(cmd: list[str]) -> float:
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _, status, usage = os.wait4(proc.pid, 0)
  if status != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-2000:]}")
  return usage.ru_maxrss / 1024.0  # Linux: KiB


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--frames", type=int, default=240)
  ap.add_argument("--faces", type=int, default=1)
  ap.add_argument("--backbone", default="resnet50")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--redetect", type=int, default=30)
  ap.add_argument("--simple-frames", type=int, default=48, help="0: skip the simple path")
  ap.add_argument("--official", default=None, help="path of the official ME-GraphAU code")
  ap.add_argument("--memory", type=int, default=0, help="N: peak RSS of the CLI on N and 10N frames (0: skip)")
  args = ap.parse_args(argv)
  if args.official:  # torchvision crashes when imported after TensorFlow (which MTCNN loads): import it first
    import torchvision  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
  tmp = tempfile.mkdtemp(prefix="predict_video_")
  video = synthetic_video.write(os.path.join(tmp, "clip.mp4"), args.frames, faces=args.faces, seed=2)
  print(f"devices: {jax.devices()}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True)
  print(f"video: 640x360, {args.frames} frames, {args.faces} face(s); {args.backbone} stage 2, batch {args.batch}")

  model = build(ModelSpec(args.backbone, 12, 2))
  pr = Predictor(model, batch_size=args.batch, redetect=args.redetect)
  _end_to_end(pr, video, os.path.join(tmp, "warmup.csv"), max_frames=2 * args.batch)  # compile, load MTCNN

  t0 = time.perf_counter()
  n_dec = sum(1 for _ in media.iter_video(video))
  decode_fps = n_dec / (time.perf_counter() - t0)

  pr.times.seconds.clear()
  n, wall, crops = _end_to_end(pr, video, os.path.join(tmp, "rows.csv"))
  e2e_fps, stages = n / wall, dict(pr.times.seconds)

  x = np.stack([pr.transform(c) for c in crops])
  usable = (len(x) // args.batch) * args.batch
  faces_per_frame = len(x) / n
  pr.run_batch(x[: args.batch])
  t0 = time.perf_counter()
  for i in range(0, usable, args.batch):
    pr.run_batch(x[i : i + args.batch])
  model_fps = usable / (time.perf_counter() - t0) / faces_per_frame

  rows = [
    ("decode only", decode_fps),
    ("model only (same crops)", model_fps),
    ("end to end (pipeline)", e2e_fps),
  ]
  if args.simple_frames:
    simple = Predictor(model, batch_size=args.batch, redetect=1, threads=False)
    simple.run_batch(x[: args.batch])
    ns, ws, _ = _end_to_end(simple, video, os.path.join(tmp, "simple.csv"), max_frames=args.simple_frames)
    rows.append((f"simple path (first {ns} frames)", ns / ws))
  if args.official:
    rows.append(("official PyTorch model only", _official_fps(args.official, x, args.batch, faces_per_frame)))
  print(f"\n{'':34s} frames/s   vs model only")
  for name, fps in rows:
    print(f"{name:34s} {fps:8.2f}   {fps / model_fps:6.2f}")
  print(f"\nend to end: {n} frames in {wall:.1f} s; busy seconds per stage (overlapping threads):")
  for stage, sec in sorted(stages.items(), key=lambda kv: -kv[1]):
    print(f"  {stage:10s} {sec:7.2f} s  {1000 * sec / n:7.1f} ms/frame")
  print(f"  process CPU time {resource.getrusage(resource.RUSAGE_SELF).ru_utime:.0f} s user", flush=True)

  if args.memory:
    ckpt = loader.save(model, os.path.join(tmp, "ckpt"))
    peaks = []
    for k in (1, 10):
      v = synthetic_video.write(os.path.join(tmp, f"mem{k}.mp4"), k * args.memory, faces=args.faces, seed=2)
      cmd = [sys.executable, "-m", "megraph_jax.predict", "-c", ckpt, v, "-o", os.path.join(tmp, f"mem{k}.csv")]
      peaks.append(_peak_rss_mib([*cmd, "--no-progress", "--batch-size", str(args.batch)]))
      print(f"peak RSS, {k * args.memory} frames: {peaks[-1]:.0f} MiB", flush=True)
    print(f"peak RSS ratio 10x / 1x: {peaks[1] / peaks[0]:.3f}")


if __name__ == "__main__":
  main()
