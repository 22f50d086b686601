"""AUs of your own faces: :class:`Predictor` (API) and ``python -m megraph_jax.predict`` (CLI).

  python -m megraph_jax.predict --checkpoint CKPT photo.jpg folder/ clip.mp4 -o out.csv --plot pics/

CKPT is a directory written by ``python -m megraph_jax.convert`` or by training (``<workdir>/fold1/stage2``),
or an official ME-GraphAU or OpenGraphAU ``.pth``. Faces are found and aligned with MTCNN
(``megraph_jax.predict.faces``), or, with ``--no-align``, the whole image goes through the official demo's
transform (shorter side 256, centre 224 crop). One output row per face (and one per unreadable file or faceless
frame, with its status), as CSV or JSON (with a legend: AU code -> FACS name).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from megraph_jax import loader, numerics
from megraph_jax.data.transforms import eval_transform
from megraph_jax.errors import NoInputsError, UserError
from megraph_jax.model_factory import Model, ModelSpec, eval_view
from megraph_jax.predict import faces as facelib
from megraph_jax.predict import media, pipeline, plots
from megraph_jax.predict.records import (
  FacePrediction,
  RecordWriter,
  Smoother,
  StagedOutput,
  plot_stem,
  smooth,
  unique_stem,
)
from megraph_jax.task import au_legend


def _forward(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, *, k: int) -> dict[str, jax.Array]:
  """Probabilities and what the model's relation-graph picture shows (``FaceTrunk.relation_graph``: kNN links of
  the node features, stage 2's edge strengths; nothing for the baseline)."""
  model = nnx.merge(graphdef, state)
  out = model(images)
  return {"probs": out["au_probs"].astype(jnp.float32), **model.relation_graph(out, k)}


class Predictor:
  """Detect, align and predict AUs on images, folders, videos and live sources (the CLI's engine, for notebooks too).

  Frames flow through :mod:`megraph_jax.predict.pipeline` (decode -> faces -> model, overlapped in threads with
  ``threads=True``); the model always runs at ``batch_size`` (padded), so it compiles once.
  """

  def __init__(
    self,
    model: Model,
    *,
    au_names: Sequence[str] | None = None,
    align: bool = True,
    aligner: facelib.Aligner | None = None,
    batch_size: int = 8,
    threshold: float = 0.5,
    knn_k: int | None = None,
    resize: int | None = None,
    min_face_size: int | None = None,
    detector: str = "jax",
    thorough: bool = False,
    redetect: int = 30,
    threads: bool = True,
    precision: str = "default",
    layout: str = "auto",
  ):
    self.spec = ModelSpec.of(model)
    self.num_aus = self.spec.num_aus
    self.au_names = list(au_names) if au_names else list(self.spec.names)
    if len(self.au_names) != self.num_aus:
      raise ValueError(
        f"{len(self.au_names)} AU names ({','.join(self.au_names)}) for a model of "
        f"{self.num_aus} AUs; pass {self.num_aus} names (--au-names)"
      )
    self.stage = self.spec.stage
    fgg = self.spec.stage == 1 and self.spec.head in ("megraph", "opengraphau") and self.spec.use_fgg
    self.knn_k = knn_k or (self.spec.neighbor_num if fgg else 4)
    self.img_size, self.resize = self.spec.img_size, resize
    self.batch_size, self.threshold = max(1, int(batch_size)), float(threshold)
    self.align, self._aligner, self._min_face_size = align, aligner, min_face_size
    self.detector_backend = detector  # facelib.DETECTORS: 'jax' (default) or 'mtcnn-tf'
    self.still_passes = facelib.THOROUGH_PASSES if thorough else facelib.STILL_PASSES  # a still's extra passes
    self.redetect, self.threads = max(1, int(redetect)), bool(threads)
    self.times = pipeline.StageTimes()  # busy seconds per stage, summed over every call
    self._detector: facelib.Detector | None = None
    self.model = model = eval_view(model)
    graphdef, self._state = nnx.split(model)
    forward = functools.partial(_forward, graphdef, k=self.knn_k)  # matmul precision and layouts: numerics.py
    self._fn = jax.jit(numerics.traced_with(forward, precision=precision, layout=layout))

  @classmethod
  def from_checkpoint(
    cls,
    path: str | os.PathLike,
    *,
    backbone: str | None = None,
    neighbor_num: int | None = None,
    img_size: int | None = None,
    au_names: Sequence[str] | None = None,
    dtype: Any = None,
    **kw,
  ) -> Predictor:
    """A Predictor for any checkpoint :func:`megraph_jax.loader.load` reads (AU names from model.json if stored).

    ``backbone``, ``neighbor_num`` and ``img_size`` only matter for an official ``.pth`` (default: read from
    the tensors, 3 for 8 AUs else 4, 224).
    """
    official = {
      k: v for k, v in dict(backbone=backbone, neighbor_num=neighbor_num, img_size=img_size).items() if v is not None
    }
    model, spec = loader.load(path, dtype=dtype, **official)
    return cls(model, au_names=au_names or spec.au_names, **kw)

  def detector(self) -> facelib.Detector:
    """The MTCNN detector (made on first use, shared by every call)."""
    if self._detector is None:
      self._detector = facelib.Detector(
        min_face_size=self._min_face_size, backend=self.detector_backend, still_passes=self.still_passes
      )
    return self._detector

  def transform(self, crop: np.ndarray) -> np.ndarray:
    """The model input of an aligned crop (:func:`megraph_jax.data.transforms.eval_transform`)."""
    return eval_transform(crop, self.img_size, self.resize)

  def faces(self, rgb: np.ndarray) -> list[facelib.AlignedFace]:
    """Aligned faces of an RGB frame; with ``align=False`` the whole frame (the eval transform does the rest: the
    official demo's Resize(256) + CenterCrop(224))."""
    if not self.align:
      return facelib.whole_image(rgb)
    if self._aligner is not None:
      return self._aligner(rgb)
    return [facelib.aligned(rgb, f) for f in self.detector()(rgb, relaxed=True)]

  def run_batch(self, x: np.ndarray) -> dict[str, np.ndarray]:
    """Model outputs for exactly ``batch_size`` model inputs ``[batch_size, S, S, 3]`` (the one compiled shape)."""
    if len(x) != self.batch_size:
      raise ValueError(f"run_batch: {len(x)} inputs for batch size {self.batch_size}; pad them")
    with self.times("model"):
      return {k: np.asarray(v) for k, v in self._fn(self._state, jnp.asarray(x)).items()}

  def predict_crops(self, crops: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Model outputs for aligned crops: ``probs`` [B, N], ``adjacency`` [B, N, N] (not for the baseline),
    ``edge_strength`` [B, N, N] (stage 2)."""
    x = np.stack([self.transform(c) for c in crops])
    outs = []
    for i in range(0, len(x), self.batch_size):
      chunk = x[i : i + self.batch_size]
      pad = np.zeros((self.batch_size - len(chunk), *chunk.shape[1:]), np.float32)
      outs.append({k: v[: len(chunk)] for k, v in self.run_batch(np.concatenate([chunk, pad])).items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  def predict_frames(self, frames: Iterable[media.Frame], *, live: bool = False) -> Iterator[FacePrediction]:
    """Predictions in frame order, faces batched across frames, streamed (``live``: no waiting for a full batch)."""
    finder = pipeline.FaceFinder(
      self.transform,
      detector=self.detector if self.align else None,
      aligner=self._aligner if self.align else None,
      redetect=self.redetect,
      batch=self.batch_size,
      times=self.times,
    )
    source = pipeline.timed(iter(frames), self.times, "decode")
    if not self.threads:
      yield from pipeline.predict_rows(finder(source), self.run_batch, self.batch_size, live=live)
      return
    b = self.batch_size  # queue sizes: a model batch ready while one runs; they bound the memory in flight
    stages = [pipeline.Prefetch(source, b, "decode")]
    stages.append(pipeline.Prefetch(finder(stages[-1]), 2 * b, "faces"))
    stages.append(pipeline.Prefetch(pipeline.predict_rows(stages[-1], self.run_batch, b, live=live), 2 * b, "model"))
    try:
      yield from stages[-1]
    finally:
      for st in reversed(stages):
        st.close()

  def iter_predict(
    self,
    inputs: str | os.PathLike | Sequence[str | os.PathLike] = (),
    *,
    camera: str | int | None = None,
    every: int = 1,
    max_frames: int | None = None,
    progress: bool = False,
  ) -> Iterator[FacePrediction]:
    """Predictions for images, folders and videos (every ``every``-th frame), or for a live ``camera`` source (a
    device number, device path or URL: :func:`megraph_jax.predict.media.iter_capture`), streamed in input order."""
    if camera is not None:
      frames, total = media.iter_capture(camera, every=every, max_frames=max_frames), max_frames
    else:
      paths = media.expand_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)
      # Whole-image mode reads stills as the official pil_loader does (no EXIF rotation, alpha dropped), so its
      # scores are the official demo's; face mode applies EXIF orientation and composites transparency on white.
      frames = media.iter_media(paths, every=every, max_frames=max_frames, plain=not self.align)
      total = media.count_frames(paths, every=every, max_frames=max_frames) if progress else None
    rows = self.predict_frames(frames, live=camera is not None)
    yield from pipeline.with_progress(rows, total) if progress else rows

  def predict(
    self,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    every: int = 1,
    max_frames: int | None = None,
    smooth_window: int = 1,
    progress: bool = False,
  ) -> list[FacePrediction]:
    """All predictions for ``inputs``, video probabilities smoothed over ``smooth_window`` frames."""
    return smooth(list(self.iter_predict(inputs, every=every, max_frames=max_frames, progress=progress)), smooth_window)

  def predict_image(self, image: np.ndarray, name: str = "<array>") -> list[FacePrediction]:
    """Predictions for one image held in memory: uint8 RGB ``[H, W, 3]``, RGBA or grayscale."""
    return list(self.predict_frames([media.Frame(name, 0, media.as_rgb(image, name))]))

  def save_plots(self, p: FacePrediction, directory: str, stem: str | None = None) -> list[str]:
    """Writes ``<stem>_au.png`` (face + AU bars) and ``<stem>_graph.png`` (relation graph) of one face."""
    return plots.save_face_pictures(
      p, directory, stem or plot_stem(p), self.au_names, threshold=self.threshold, k=self.knn_k, spec=self.spec
    )

  def save_timeline(self, preds: Sequence[FacePrediction], path: str) -> str | None:
    """Writes the AU-probabilities-over-time plot of one video's predictions (None if no face was found)."""
    return plots.save_timeline(preds, path, self.au_names, threshold=self.threshold)


# ----------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
  """The CLI's arguments (also the options of ``python -m megraph_jax.app``, which passes them on)."""
  ap = argparse.ArgumentParser(prog="python -m megraph_jax.predict", description=__doc__.splitlines()[0])
  ap.add_argument("inputs", nargs="*", help="images, folders (searched recursively) and videos")
  ap.add_argument(
    "--camera",
    default=None,
    metavar="SOURCE",
    help="predict a live source until it ends (Ctrl-C stops): a camera number, a device path or an RTSP/HTTP URL",
  )
  ap.add_argument(
    "--checkpoint",
    "-c",
    required=True,
    help="convert/training directory (model.json) or an official ME-GraphAU / OpenGraphAU .pth",
  )
  ap.add_argument("--output", "-o", default="-", help="output file (.csv or .json); '-' = stdout (default)")
  ap.add_argument("--format", choices=("csv", "json"), default=None, help="default: from --output, else csv")
  ap.add_argument(
    "--no-align",
    action="store_true",
    help="no face detection: the whole image, read and transformed exactly as the official demo (no EXIF rotation)",
  )
  ap.add_argument("--plot", metavar="DIR", default=None, help="write face + AU bars and relation-graph PNGs")
  ap.add_argument("--plot-every", type=int, default=10, help="video frames with pictures: every N-th (default 10)")
  ap.add_argument("--smooth", type=int, default=1, help="video: moving average over N frames (default 1: off)")
  ap.add_argument("--every", type=int, default=1, help="video: predict every N-th frame")
  ap.add_argument("--max-frames", type=int, default=None, help="video: at most this many frames per file")
  ap.add_argument("--batch-size", type=int, default=8)
  ap.add_argument("--threshold", type=float, default=0.5, help="occurrence threshold on the probability")
  ap.add_argument("--au-names", default=None, help="comma-separated AU names (default: model.json, BP4D/DISFA)")
  ap.add_argument("--backbone", default=None, help=".pth only; default: read from the tensors")
  ap.add_argument("--neighbor-num", type=int, default=None, help=".pth stage 1: FGG K (default BP4D 4, DISFA 3)")
  ap.add_argument("--img-size", type=int, default=None, help=".pth only: input side (default 224, official)")
  ap.add_argument("--resize", type=int, default=None, help="resize before the centre crop (default img*256/224)")
  ap.add_argument("--knn", type=int, default=None, help="K of the graph pictures (default the model's / 4)")
  ap.add_argument(
    "--min-face-size",
    type=int,
    default=None,
    help="smallest face searched, px (default: 1/20 of the shorter side, 20..40)",
  )
  ap.add_argument(
    "--detector",
    choices=facelib.DETECTORS,
    default="jax",
    help="face detector: MTCNN in JAX (default, no TensorFlow) or the mtcnn package on TensorFlow (mtcnn-tf)",
  )
  ap.add_argument(
    "--thorough",
    action="store_true",
    help="stills: the extra detection passes (equalised, mirrored, finer, lower thresholds) on every still, not "
    "only on those where plain MTCNN finds no face (finds more faces in group photos; ~5x the detection time)",
  )
  ap.add_argument(
    "--redetect", type=int, default=30, help="video: full detection every N frames, tracking between (1: every frame)"
  )
  ap.add_argument(
    "--precision",
    choices=numerics.PRECISIONS,
    default="default",
    help="float32 matmul precision: default (fast; on GPU/TPU ~1e-4 from the official model) or highest (~1e-7)",
  )
  ap.add_argument("--no-threads", action="store_true", help="run decode, detection and model one after another")
  ap.add_argument("--no-progress", action="store_true")
  return ap


# Called with each row once it is written, and the pictures saved for it (``run_cli``'s ``on_row``).
RowCallback = Callable[[FacePrediction, list[str]], None]


class _Output:
  """The CLI's end of the stream: pictures, the per-video timeline (kept only with --plot), stderr notes, rows."""

  def __init__(
    self,
    args: argparse.Namespace,
    predictor: Predictor,
    writers: Sequence[RecordWriter],
    counts: collections.Counter[str],
    on_row: RowCallback | None = None,
  ):
    self.args, self.predictor, self.writers, self.on_row = args, predictor, list(writers), on_row
    self.counts = counts  # rows written, by status (filled as they are written: read after a failure too)
    self.stems: dict[str, str] = {}  # input file -> picture name
    self.video: list[FacePrediction] = []  # slim rows of the current video, for its timeline picture

  def keeps_crop(self, p: FacePrediction) -> bool:
    return bool(self.args.plot) and not (p.is_video and p.frame % (self.args.plot_every * self.args.every) != 0)

  def __call__(self, p: FacePrediction) -> None:
    args, pictures = self.args, []
    if args.plot:
      if self.video and p.file != self.video[0].file:
        self.timeline()
      if p.crop is not None:
        pictures = self.predictor.save_plots(p, args.plot, plot_stem(p, unique_stem(p.file, self.stems)))
        p.crop = None
      if p.is_video and p.status == "ok":
        self.video.append(dataclasses.replace(p, adjacency=None, edge_strength=None))
    if p.status != "ok":
      where = f" frame {p.frame}" if p.is_video else ""
      print(f"predict: {p.file}{where}: {p.status}: {p.message}", file=sys.stderr)
    for writer in self.writers:
      writer.write(p)
    self.counts[p.status] += 1
    if self.on_row is not None:
      self.on_row(p, pictures)

  def timeline(self) -> None:
    if self.video:
      stem = unique_stem(self.video[0].file, self.stems)
      self.predictor.save_timeline(self.video, os.path.join(self.args.plot, f"{stem}_timeline.png"))
      self.video = []


def cli_predictor(args: argparse.Namespace) -> Predictor:
  """The CLI's Predictor (its checkpoint loaded): before any output file is opened."""
  au_names = args.au_names.split(",") if args.au_names else None
  return Predictor.from_checkpoint(
    args.checkpoint,
    backbone=args.backbone,
    neighbor_num=args.neighbor_num,
    img_size=args.img_size,
    au_names=au_names,
    align=not args.no_align,
    batch_size=args.batch_size,
    threshold=args.threshold,
    knn_k=args.knn,
    resize=args.resize,
    min_face_size=args.min_face_size,
    detector=args.detector,
    thorough=args.thorough,
    redetect=args.redetect,
    threads=not args.no_threads,
    precision=args.precision,
  )


def cli_writer(args: argparse.Namespace, predictor: Predictor, out: TextIO, fmt: str | None = None) -> RecordWriter:
  """The CLI's row writer on ``out``: format ``fmt``, else ``--format``, else from ``--output``'s suffix (csv by
  default); the JSON header names the checkpoint and the AU legend."""
  fmt = fmt or args.format or ("json" if args.output.lower().endswith(".json") else "csv")
  header = {"checkpoint": args.checkpoint, "legend": au_legend(predictor.au_names)}
  return RecordWriter(out, fmt, predictor.au_names, threshold=args.threshold, header=header)


def run_cli(
  args: argparse.Namespace,
  out: TextIO,
  predictor: Predictor | None = None,
  counts: collections.Counter[str] | None = None,
  *,
  rows: Iterable[FacePrediction] | None = None,
  writers: Sequence[RecordWriter] = (),
  on_row: RowCallback | None = None,
) -> dict[str, int]:
  """Predicts ``args.inputs`` (or ``args.camera``) into ``out``, row by row; returns counts of rows by status
  (``counts``, when given, is filled as rows are written).

  For other front ends (``python -m megraph_jax.app``): ``rows`` replaces the predictor's stream of ``args``'
  inputs, ``writers`` (:func:`cli_writer`) get every row too, and ``on_row`` is called with each row written and
  the pictures saved for it."""
  predictor = predictor or cli_predictor(args)
  counts = collections.Counter() if counts is None else counts
  writer = cli_writer(args, predictor, out)
  output, smoother = _Output(args, predictor, [writer, *writers], counts, on_row), Smoother(args.smooth)
  if rows is None:
    rows = predictor.iter_predict(
      args.inputs, camera=args.camera, every=args.every, max_frames=args.max_frames, progress=not args.no_progress
    )
  try:
    for p in rows:
      if not output.keeps_crop(p):
        p.crop = None
      for q in smoother.push(p):
        output(q)
  except KeyboardInterrupt:  # the way to stop a live source; the rows so far are on disk
    if args.camera is None:
      raise
    print("predict: stopped", file=sys.stderr)
  for q in smoother.finish():
    output(q)
  if args.plot:
    output.timeline()
  for w in output.writers:
    w.close()
  return dict(output.counts)


def _read_any(counts: collections.Counter[str]) -> bool:
  """Whether an input was read (rows ``ok`` or ``no_face``), not only errors."""
  return counts.get("ok", 0) + counts.get("no_face", 0) > 0


def _kept(staged: StagedOutput, counts: collections.Counter[str], why: str) -> None:
  """Ends a run that failed: its rows (if any) to ``<output>.partial``, said on stderr; the output left alone."""
  rows = sum(counts.values())
  kept = staged.keep_partial(rows)
  if kept:
    print(f"predict: {why}: {staged.path} left as it was; the {rows} rows written are in {kept}", file=sys.stderr)


def _run_to_file(args: argparse.Namespace, predictor: Predictor, counts: collections.Counter[str]) -> None:
  """``run_cli`` into ``args.output`` through a :class:`StagedOutput`: the file is replaced only by a run that read
  an input; a failed or interrupted one leaves it alone and its rows, if any, in ``<output>.partial``."""
  staged = StagedOutput(args.output)
  try:
    run_cli(args, staged.open(), predictor, counts)
  except KeyboardInterrupt:
    _kept(staged, counts, "interrupted")
    raise
  except BaseException as e:
    _kept(staged, counts, "failed" if isinstance(e, UserError) else f"failed ({type(e).__name__})")
    raise
  if _read_any(counts):
    staged.commit()
  else:
    _kept(staged, counts, "no input could be read")


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point. Exit status: 0 when at least one input was read (unreadable ones are rows in the output),
  1 when none could be, 2 for a bad checkpoint, camera or argument, or inputs without an image or video (an
  ``error:`` line names it), 130 when interrupted (Ctrl-C) on files. ``-o FILE`` is replaced only at the end of a
  run that read an input; otherwise it is left as it was, and the rows written go to ``FILE.partial``."""
  ap = parser()
  args = ap.parse_args(argv)
  if not args.inputs and args.camera is None:
    ap.error("give inputs (images, folders, videos) or --camera SOURCE")
  counts: collections.Counter[str] = collections.Counter()
  try:
    if args.camera is None and not media.expand_inputs(args.inputs):
      raise NoInputsError(
        f"no image or video found in {', '.join(args.inputs)} (folders are searched recursively for "
        f"{', '.join(media.IMAGE_EXTS + media.VIDEO_EXTS)}); name files or folders that hold some"
      )
    predictor = cli_predictor(args)  # a wrong checkpoint stops here, before any output file is opened
    if args.output == "-":
      run_cli(args, sys.stdout, predictor, counts)
    else:
      _run_to_file(args, predictor, counts)
  except UserError as e:
    print(f"predict: error: {e}", file=sys.stderr)
    return e.exit_status
  except KeyboardInterrupt:
    print("predict: interrupted", file=sys.stderr)
    return 130
  print(
    "predict: "
    + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    + " rows"
    + ("" if args.output == "-" or not _read_any(counts) else f" -> {args.output}"),
    file=sys.stderr,
  )
  return 0 if _read_any(counts) else 1


if __name__ == "__main__":
  sys.exit(main())
