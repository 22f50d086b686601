"""Prediction speed on a video, end to end, next to the model alone and decoding alone, in one run.

Usage: python benchmarks/predict_video.py [--frames 240] [--faces 1] [--backbone resnet50] [--batch 8]
         [--simple-frames 48] [--official PATH_TO_ME-GraphAU] [--memory 48]

On a GPU (the defaults become 3000 frames, batch 64) the same command reports the end-to-end rate against the
1,000 frames/s target: ``python benchmarks/predict_video.py --simple-frames 0 --memory 300``.

A synthetic 640x360 video (``megraph_jax.data.synthetic_video``; no real data) is predicted by a stage-2 model with
random weights (timing does not depend on them), on the default JAX device (CPU here; a GPU when present):
  * decode: reading the frames (OpenCV) and nothing else;
  * end to end: ``Predictor.iter_predict`` (decode, MTCNN detection / ONet tracking, alignment, model) with every
    row written to a CSV file, as the CLI does; busy seconds per stage and where it runs (the device: JAX on the
    default device; the host: the CPU's Python/NumPy/OpenCV threads), stages overlap in threads, so they may sum to
    more than the wall time;
  * model only: the same aligned crops, already transformed, through the jitted model at the same batch size;
  * simple path: the same predictor one stage after another with full detection on every frame (the behaviour
    before the pipeline), on the first ``--simple-frames`` frames;
  * official: the official ME-GraphAU PyTorch model (``--official``), eval mode, on the same crops and batch.
The model alone is timed just before and just after the end-to-end run (load on a shared machine drifts) and
the mean is the reference. ``--memory N`` also runs the CLI on an N-frame and a 10N-frame video in subprocesses
and reports their peak RSS and the peak traced Python/NumPy heap while predicting (after a warm-up run).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

import jax
import numpy as np

from megraph_jax import loader
from megraph_jax.data import synthetic_video
from megraph_jax.model_factory import ModelSpec, build
from megraph_jax.predict import media
from megraph_jax.predict import predictor as predict
from megraph_jax.predict.records import RecordWriter

GPU_TARGET = 1000  # frames/s end to end on one H100/H200-class GPU (issue 24; py-feat 2.0: 239 on a Blackwell GPU)
# Where each stage of megraph_jax.predict.pipeline runs: on the device (jitted JAX, batched) or on the host's CPU.
WHERE = {
  "model": "device",
  "detect": "device (MTCNN; large frames shrunk on the host first)",
  "track": "device (ONet refit along frames)",
  "align": "device (similarity warp, batched)",
  "transform": "host (eval transform, threads)",
  "decode": "host (OpenCV, its threads)",
  "write": "host (CSV rows)",
}


def _end_to_end(pr: predict.Predictor, video: str, out_csv: str, max_frames: int | None = None):
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


def _model_fps(pr: predict.Predictor, x: np.ndarray, faces_per_frame: float) -> float:
  """Frames/s of the jitted model alone on model inputs ``x`` (whole batches)."""
  usable = (len(x) // pr.batch_size) * pr.batch_size
  pr.run_batch(x[: pr.batch_size])
  t0 = time.perf_counter()
  for i in range(0, usable, pr.batch_size):
    pr.run_batch(x[i : i + pr.batch_size])
  return usable / (time.perf_counter() - t0) / faces_per_frame


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


def _child_peaks(cmd: list[str]) -> tuple[float, float]:
  """(peak RSS, peak traced heap) in MiB of a ``--memory-child`` run."""
  with tempfile.TemporaryFile("w+") as out:
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out.seek(0)
    text = out.read()
  if status != 0 or "traced_peak_mib=" not in text:
    raise RuntimeError(f"{' '.join(cmd)} failed (status {status}):\n{text[-2000:]}")
  return usage.ru_maxrss / 1024.0, float(text.split("traced_peak_mib=")[1].split()[0])  # ru_maxrss: KiB


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  on_cpu = jax.default_backend() == "cpu"
  ap.add_argument("--frames", type=int, default=240 if on_cpu else 3000)
  ap.add_argument("--faces", type=int, default=1)
  ap.add_argument("--backbone", default="resnet50")
  ap.add_argument("--batch", type=int, default=8 if on_cpu else 64, help="model batch (default 8 on CPU, 64 on GPU)")
  ap.add_argument("--redetect", type=int, default=30)
  ap.add_argument("--simple-frames", type=int, default=48, help="0: skip the simple path")
  ap.add_argument("--official", default=None, help="path of the official ME-GraphAU code")
  ap.add_argument("--memory", type=int, default=0, help="N: peak memory of the CLI on N and 10N frames (0: skip)")
  ap.add_argument("--memory-child", nargs=3, default=None, help=argparse.SUPPRESS)  # CKPT WARM VIDEO
  args = ap.parse_args(argv)
  if args.memory_child:
    return _memory_child(*args.memory_child, args.batch)
  if args.official:  # torchvision crashes when imported after TensorFlow (which MTCNN loads): import it first
    import torchvision  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
  with tempfile.TemporaryDirectory(prefix="predict_video_") as tmp:
    _measure(args, tmp, on_cpu)


def _measure(args: argparse.Namespace, tmp: str, on_cpu: bool) -> None:
  """The figures, with the clip and the CSVs in ``tmp``."""
  video = synthetic_video.write(os.path.join(tmp, "clip.mp4"), args.frames, faces=args.faces, seed=2)
  print(f"devices: {jax.devices()}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True)
  print(f"video: 640x360, {args.frames} frames, {args.faces} face(s); {args.backbone} stage 2, batch {args.batch}")

  model = build(ModelSpec(args.backbone, 12, 2))
  pr = predict.Predictor(model, batch_size=args.batch, redetect=args.redetect)
  _, _, warm_crops = _end_to_end(pr, video, os.path.join(tmp, "warm.csv"), max_frames=2 * args.batch)  # compile
  _warm_detector(pr.detector(), [fr.image for fr in media.iter_video(video, max_frames=args.batch)])

  t0 = time.perf_counter()
  n_dec = sum(1 for _ in media.iter_video(video))
  decode_fps = n_dec / (time.perf_counter() - t0)

  warm_x = np.stack([pr.transform(c) for c in warm_crops])
  n_faces = args.frames * args.faces
  before = _model_fps(pr, warm_x[np.arange(n_faces) % len(warm_x)], args.faces)  # brackets the end-to-end run

  pr.times.seconds.clear()
  n, wall, crops = _end_to_end(pr, video, os.path.join(tmp, "rows.csv"))
  e2e_fps, stages = n / wall, dict(pr.times.seconds)

  x = np.stack([pr.transform(c) for c in crops])
  faces_per_frame = len(x) / n
  after = _model_fps(pr, x, faces_per_frame)
  model_fps = (before + after) / 2
  print(f"model only: {before:.2f} frames/s before the end-to-end run, {after:.2f} after (mean below)")

  rows = [
    ("decode only", decode_fps),
    ("model only (same crops)", model_fps),
    ("end to end (pipeline)", e2e_fps),
  ]
  if args.simple_frames:
    simple = predict.Predictor(model, batch_size=args.batch, redetect=1, threads=False)
    simple.run_batch(x[: args.batch])
    ns, ws, _ = _end_to_end(simple, video, os.path.join(tmp, "simple.csv"), max_frames=args.simple_frames)
    rows.append((f"simple path (first {ns} frames)", ns / ws))
  if args.official:
    rows.append(("official PyTorch model only", _official_fps(args.official, x, args.batch, faces_per_frame)))
  print(f"\n{'':34s} frames/s   vs model only")
  for name, fps in rows:
    print(f"{name:34s} {fps:8.2f}   {fps / model_fps:6.2f}")
  if not on_cpu:
    verdict = "met" if e2e_fps >= GPU_TARGET else "NOT met"
    print(f"target on one GPU: >= {GPU_TARGET} frames/s end to end: {e2e_fps:.0f} ({verdict})")
  print(f"\nend to end: {n} frames in {wall:.1f} s; busy seconds per stage (overlapping threads):")
  for stage, sec in sorted(stages.items(), key=lambda kv: -kv[1]):
    print(f"  {stage:10s} {sec:7.2f} s  {1000 * sec / n:7.1f} ms/frame   {WHERE.get(stage, '')}")
  print(f"  process CPU time {resource.getrusage(resource.RUSAGE_SELF).ru_utime:.0f} s user", flush=True)

  if args.memory:
    ckpt = loader.save(model, os.path.join(tmp, "ckpt"))
    warm = synthetic_video.write(os.path.join(tmp, "warm.mp4"), 2 * args.batch, faces=args.faces, seed=2)
    peaks = []
    for k in (1, 10):
      v = synthetic_video.write(os.path.join(tmp, f"mem{k}.mp4"), k * args.memory, faces=args.faces, seed=2)
      cmd = [sys.executable, __file__, "--memory-child", ckpt, warm, v, "--batch", str(args.batch)]
      peaks.append(_child_peaks(cmd))
      print(
        f"{k * args.memory} frames: peak RSS {peaks[-1][0]:.0f} MiB (whole process, XLA compile included), "
        f"peak traced heap while predicting {peaks[-1][1]:.1f} MiB (frames, crops, rows)",
        flush=True,
      )
    print(f"10x / 1x: peak RSS {peaks[1][0] / peaks[0][0]:.3f}, peak traced heap {peaks[1][1] / peaks[0][1]:.3f}")


def _warm_detector(det, frames: list) -> None:
  """Compiles what the timed run may need beyond the warm-up run: full detection on batches of ready keyframes
  and the tracking refit along runs of frames, each for every power-of-two count up to ``len(frames)``."""
  boxes = [f.box for f in det.detect_many(frames[:1])[0]]
  k = 1
  while k <= len(frames):
    det.detect_many(frames[:k])
    det.track(frames[:k], boxes)
    k *= 2


def _memory_child(ckpt: str, warm: str, video: str, batch: int) -> None:
  """The CLI on ``warm`` (compiles, loads MTCNN), then on ``video`` under tracemalloc; prints the traced peak."""
  args = ["-c", ckpt, "--batch-size", str(batch), "--no-progress"]
  predict.main([*args, warm, "-o", os.devnull])
  tracemalloc.start()
  predict.main([*args, video, "-o", video + ".csv"])
  print(f"traced_peak_mib={tracemalloc.get_traced_memory()[1] / 2**20:.3f}")


if __name__ == "__main__":
  main()
