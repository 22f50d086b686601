"""AUs of your own faces: :class:`Predictor` (API) and ``python -m megraph_jax.predict`` (CLI).

  python -m megraph_jax.predict --checkpoint CKPT photo.jpg folder/ clip.mp4 -o out.csv --plot pics/

CKPT is a directory written by ``python -m megraph_jax.convert`` or by training (``<workdir>/fold1/stage2``),
or an official ME-GraphAU or OpenGraphAU ``.pth``. Faces are found and aligned with MTCNN (``megraph_jax.faces``),
or, with ``--no-align``, the whole image goes through the official demo's transform (shorter side 256, centre
224 crop). One output row per face (and one per unreadable file or faceless frame, with its status), as CSV or
JSON (with a legend: AU code -> FACS name).
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from megraph_jax import faces as facelib
from megraph_jax import loader, media
from megraph_jax.model_factory import Model, ModelSpec, eval_view
from megraph_jax.models.fgg import knn_adjacency
from megraph_jax.models.gated_gcn import edge_gates
from megraph_jax.records import FacePrediction, RecordWriter, file_stem, plot_stem, smooth
from megraph_jax.task import au_legend
from megraph_jax.transforms import eval_transform


def _forward(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, *, k: int) -> dict[str, jax.Array]:
  """Probabilities, kNN links of the node features (not for the baseline) and (stage 2) edge strengths."""
  out = nnx.merge(graphdef, state)(images)
  res = {"probs": out["au_probs"].astype(jnp.float32)}
  if "adjacency" in out or "node_features" in out:
    res["adjacency"] = out["adjacency"] if "adjacency" in out else knn_adjacency(out["node_features"], k)
  if "edge_logits" in out:  # [B, N*N, 4], classes (0,0) (0,1) (1,0) (1,1)
    n = res["probs"].shape[1]
    res["edge_strength"] = jax.nn.softmax(out["edge_logits"], axis=-1)[..., 3].reshape(-1, n, n)
  elif "edge_features" in out:  # OpenGraphAU stage 2, no edge classifier: N x channel-mean gate of the last layer
    n = out["node_features"].shape[1]
    res["edge_strength"] = n * jnp.mean(edge_gates(out["edge_features"], n), axis=-1).astype(jnp.float32)
  return res


class Predictor:
  """Detect, align and predict AUs on images, folders and videos (the CLI's engine, for notebooks too)."""

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
    min_face_size: int = 20,
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
    self.model = model = eval_view(model)
    graphdef, self._state = nnx.split(model)
    self._fn = jax.jit(functools.partial(_forward, graphdef, k=self.knn_k))
    self._tracker = facelib.FaceTracker()

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

  def faces(self, rgb: np.ndarray) -> list[facelib.AlignedFace]:
    """Aligned faces of an RGB frame; with ``align=False`` the whole frame (the eval transform does the rest)."""
    if not self.align:  # the official demo's transform exactly: Resize(256) + CenterCrop(224) of the whole image
      h, w = rgb.shape[:2]
      return [(rgb, (0.0, 0.0, float(w), float(h)), None)]
    if self._aligner is None:
      self._aligner = facelib.mtcnn_aligner(min_face_size=self._min_face_size)
    return self._aligner(rgb)

  def predict_crops(self, crops: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Model outputs for aligned crops: ``probs`` [B, N], ``adjacency`` [B, N, N] (not for the baseline),
    ``edge_strength`` [B, N, N] (stage 2)."""
    x = np.stack([eval_transform(c, self.img_size, self.resize) for c in crops])
    b = len(x)
    padded = min(self.batch_size, 1 << (b - 1).bit_length()) if b <= self.batch_size else b  # few shapes
    outs = []
    for i in range(0, b, padded):
      chunk = x[i : i + padded]
      n = len(chunk)
      chunk = np.concatenate([chunk, np.zeros((padded - n, *chunk.shape[1:]), np.float32)]) if n < padded else chunk
      outs.append({k: np.asarray(v)[:n] for k, v in self._fn(self._state, jnp.asarray(chunk)).items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  def _frame_predictions(self, fr: media.Frame) -> list[FacePrediction]:
    base = dict(file=fr.file, frame=fr.index, time=fr.time, is_video=fr.is_video)
    if fr.image is None:
      return [FacePrediction(**base, status="error", message=fr.error or "unreadable")]
    try:
      faces = self.faces(fr.image)
    except ImportError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # a detector failure on one frame is not fatal
      return [FacePrediction(**base, status="error", message=f"face detection failed: {type(e).__name__}: {e}")]
    if not faces:
      return [FacePrediction(**base, status="no_face", message="no face found")]
    ids = self._tracker.assign(fr.file, [f[1] for f in faces]) if fr.is_video else range(len(faces))
    return [
      FacePrediction(**base, face=i, box=box, score=score, crop=crop) for i, (crop, box, score) in zip(ids, faces)
    ]

  def _run(self, pending: list[FacePrediction]) -> None:
    out = self.predict_crops([p.crop for p in pending])
    for j, p in enumerate(pending):
      p.probs = out["probs"][j]
      p.adjacency = out["adjacency"][j] if "adjacency" in out else None
      p.edge_strength = out["edge_strength"][j] if "edge_strength" in out else None

  def predict_frames(self, frames: Iterable[media.Frame]) -> Iterator[FacePrediction]:
    """Predictions in frame order, faces batched across frames."""
    ready: collections.deque[list[FacePrediction]] = collections.deque()
    waiting: list[FacePrediction] = []
    for fr in frames:
      preds = self._frame_predictions(fr)
      ready.append(preds)
      waiting += [p for p in preds if p.status == "ok"]
      if len(waiting) >= self.batch_size:
        self._run(waiting)
        waiting = []
        while ready:
          yield from ready.popleft()
    if waiting:
      self._run(waiting)
    while ready:
      yield from ready.popleft()

  def iter_predict(
    self,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    every: int = 1,
    max_frames: int | None = None,
    progress: bool = False,
  ) -> Iterator[FacePrediction]:
    """Predictions for images, folders and videos (every ``every``-th frame), streamed in input order."""
    paths = media.expand_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)
    frames: Iterable[media.Frame] = media.iter_media(paths, every=every, max_frames=max_frames)
    if progress:
      from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

      frames = tqdm(
        frames,
        total=media.count_frames(paths, every=every, max_frames=max_frames),
        unit="frame",
        desc="predict",
        file=sys.stderr,
        dynamic_ncols=True,
      )
    yield from self.predict_frames(frames)

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
    """Predictions for one RGB uint8 image ``[H, W, 3]`` held in memory."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise ValueError(f"{name}: expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    return list(self.predict_frames([media.Frame(name, 0, image)]))

  def save_plots(self, p: FacePrediction, directory: str, stem: str | None = None) -> list[str]:
    """Writes ``<stem>_au.png`` (face + AU bars) and ``<stem>_graph.png`` (relation graph) of one face."""
    from megraph_jax import plots  # pylint: disable=import-outside-toplevel

    if p.status != "ok":
      return []
    stem = stem or plot_stem(p)
    title = f"{os.path.basename(p.file)}" + (f"  frame {p.frame}" if p.is_video else "") + f"  face {p.face}"
    face = plots.plot_face(p.crop, p.probs, self.au_names, threshold=self.threshold, title=title)
    written = [plots.save(face, os.path.join(directory, f"{stem}_au.png"))]
    if p.adjacency is not None:  # the baseline has no graph
      graph = plots.plot_graph(
        p.probs,
        self.au_names,
        p.adjacency,
        edge_strength=p.edge_strength,
        threshold=self.threshold,
        **({"edge_title": plots.GATE_TITLE} if self.spec.head == "opengraphau" else {}),
        k=self.knn_k,
        title=f"{title}  (stage-{self.stage} model)",
      )
      written.append(plots.save(graph, os.path.join(directory, f"{stem}_graph.png")))
    return written

  def save_timeline(self, preds: Sequence[FacePrediction], path: str) -> str | None:
    """Writes the AU-probabilities-over-time plot of one video's predictions (None if no face was found)."""
    from megraph_jax import plots  # pylint: disable=import-outside-toplevel

    ok = [p for p in preds if p.status == "ok"]
    if not ok:
      return None
    has_time = all(p.time is not None for p in ok)
    t = np.array([p.time if has_time else p.frame for p in ok])
    fig = plots.plot_timeline(
      t,
      np.stack([p.probs for p in ok]),
      self.au_names,
      tracks=np.array([p.face for p in ok]),
      threshold=self.threshold,
      xlabel="time (s)" if has_time else "frame",
      title=f"{os.path.basename(ok[0].file)}: AU probabilities over time",
    )
    return plots.save(fig, path)


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m megraph_jax.predict", description=__doc__.splitlines()[0])
  ap.add_argument("inputs", nargs="+", help="images, folders (searched recursively) and videos")
  ap.add_argument(
    "--checkpoint",
    "-c",
    required=True,
    help="convert/training directory (model.json) or an official ME-GraphAU / OpenGraphAU .pth",
  )
  ap.add_argument("--output", "-o", default="-", help="output file (.csv or .json); '-' = stdout (default)")
  ap.add_argument("--format", choices=("csv", "json"), default=None, help="default: from --output, else csv")
  ap.add_argument(
    "--no-align", action="store_true", help="no face detection: the whole image, as the official demo (crops, photos)"
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
  ap.add_argument("--min-face-size", type=int, default=20, help="smallest face MTCNN looks for, px")
  ap.add_argument("--no-progress", action="store_true")
  return ap


def _unique_stem(path: str, stems: dict[str, str]) -> str:
  """``file_stem(path)``, suffixed ``_2``, ``_3``, ... when another input file already has it."""
  if path not in stems:
    base, taken, i = file_stem(path), set(stems.values()), 1
    stem = base
    while stem in taken:
      i += 1
      stem = f"{base}_{i}"
    stems[path] = stem
  return stems[path]


def _by_file(preds: Iterable[FacePrediction]) -> Iterator[list[FacePrediction]]:
  group: list[FacePrediction] = []
  for p in preds:
    if group and p.file != group[0].file:
      yield group
      group = []
    group.append(p)
  if group:
    yield group


def run_cli(args: argparse.Namespace, out: TextIO) -> dict[str, int]:
  """Predicts ``args.inputs`` into ``out``; returns counts of rows by status."""
  au_names = args.au_names.split(",") if args.au_names else None
  predictor = Predictor.from_checkpoint(
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
  )
  fmt = args.format or ("json" if args.output.lower().endswith(".json") else "csv")
  header = {"checkpoint": args.checkpoint, "legend": au_legend(predictor.au_names)}
  writer = RecordWriter(out, fmt, predictor.au_names, threshold=args.threshold, header=header)
  counts, stems = collections.Counter(), {}  # stems: input file -> picture name
  stream = predictor.iter_predict(
    args.inputs, every=args.every, max_frames=args.max_frames, progress=not args.no_progress
  )
  for group in _by_file(stream):
    for p in group:  # keep crops only where pictures are drawn
      if not args.plot or (p.is_video and p.frame % (args.plot_every * args.every) != 0):
        p.crop = None
    group = smooth(group, args.smooth)
    if args.plot:
      stem = _unique_stem(group[0].file, stems)
      for p in group:
        if p.crop is not None:
          predictor.save_plots(p, args.plot, plot_stem(p, stem))
          p.crop = None
      if group[0].is_video:
        predictor.save_timeline(group, os.path.join(args.plot, f"{stem}_timeline.png"))
    for p in group:
      counts[p.status] += 1
      if p.status != "ok":
        print(
          f"predict: {p.file}" + (f" frame {p.frame}" if p.is_video else "") + f": {p.status}: {p.message}",
          file=sys.stderr,
        )
      writer.write(p)
    out.flush()
  writer.close()
  return dict(counts)


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point; returns 0 when at least one input was read (unreadable ones are in the output)."""
  args = _parser().parse_args(argv)
  if args.output == "-":
    counts = run_cli(args, sys.stdout)
  else:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", newline="") as f:
      counts = run_cli(args, f)
  print(
    "predict: "
    + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    + " rows"
    + ("" if args.output == "-" else f" -> {args.output}"),
    file=sys.stderr,
  )
  return 0 if counts.get("ok", 0) + counts.get("no_face", 0) > 0 else 1


if __name__ == "__main__":
  sys.exit(main())
