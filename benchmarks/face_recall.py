"""Face detection recall and false positives on hard stills, for the detector's passes (no network, no real data
beyond scikit-image's bundled photos).

Usage: python benchmarks/face_recall.py [--backend jax|mtcnn-tf] [--configs 'base,still (the default),...']

Positives (each face's box known): scikit-image's astronaut and cameraman, the astronaut made hard (low contrast,
dark, overexposed, blurred, noisy, rotated 35 degrees, a 20 px face, the face half in shadow, very low contrast,
very dark and noisy), and LFW faces (the first 100 of ``skimage.data.lfw_subset``: 25 px grayscale crops) four
ways: upscaled to 88 px (16 per 512 px mosaic), to 36 px (64 per mosaic), at a quarter of their contrast, and
turned by 30 degrees.
Negatives: 16 bundled photos without a face (a cat among them) and the 100 LFW non-face crops as mosaics. A
detection is a hit when its box overlaps an unclaimed face by IoU >= 0.3; every other detection is a false
positive. Each configuration is a list of passes whose faces are pooled (:func:`megraph_jax.predict.faces.merge`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megraph_jax.predict import faces, media  # noqa: E402

ASTRONAUT_FACE = (182.0, 64.0, 265.0, 172.0)
CAMERA_FACE = (200.0, 115.0, 257.0, 198.0)
NEGATIVES = (
  "chelsea", "coffee", "rocket", "coins", "page", "text", "hubble_deep_field", "retina", "immunohistochemistry",
  "moon", "cell", "clock", "brick", "grass", "gravel", "colorwheel",
)  # fmt: skip


# Configurations: passes pooled in order ('?name': only when nothing was found before; see Detector.detect_passes).
CONFIGS = {
  "base": ["base"],
  "retry (today)": ["base", "?relaxed", "?relaxed-half-step"],
  "+ relaxed PNet/RNet": ["base", "relaxed-pr"],
  "+ finer pyramid": ["base", "finer"],
  "+ equalized": ["base", "equalized"],
  "+ mirrored": ["base", "mirrored"],
  "+ relaxed with ONet 0.7": ["base", "relaxed"],
  "+ all four": ["base", "relaxed-pr", "finer", "equalized", "mirrored"],
  "+ all four when none": ["base", "?relaxed-pr", "?finer", "?equalized", "?mirrored"],
  "still (the default)": ["base", *faces.STILL_PASSES],
  "still --thorough": ["base", *faces.THOROUGH_PASSES],
}


def _affine_box(box, m):
  """The box around the four corners of ``box`` moved by the affine ``m`` [2, 3]."""
  x0, y0, x1, y1 = box
  c = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) @ m[:, :2].T + m[:, 2]
  return (*c.min(0), *c.max(0))


def hard_set() -> list[tuple[str, np.ndarray, list[tuple[float, ...]]]]:
  """(name, RGB uint8 image, face boxes) of the benchmark (module docstring)."""
  from skimage import data  # pylint: disable=import-outside-toplevel

  a = data.astronaut()
  af = a.astype(np.float64)
  out = [("astronaut", a, [ASTRONAUT_FACE]), ("cameraman", media.as_rgb(data.camera()), [CAMERA_FACE])]
  u8 = lambda x: np.clip(x, 0, 255).astype(np.uint8)  # noqa: E731
  out.append(("astronaut low contrast", u8(0.2 * af + 100), [ASTRONAUT_FACE]))
  out.append(("astronaut dark", u8(255 * (af / 255) ** 3.0), [ASTRONAUT_FACE]))
  out.append(("astronaut overexposed", u8(af * 2.2 + 40), [ASTRONAUT_FACE]))
  out.append(
    ("astronaut blurred", np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(4))), [ASTRONAUT_FACE])
  )
  noisy = u8(af + np.random.default_rng(0).normal(0, 40, a.shape))
  out.append(("astronaut noisy", noisy, [ASTRONAUT_FACE]))
  ang = np.deg2rad(35.0)
  c = np.array([256.0, 256.0])
  rot = np.array([[np.cos(ang), np.sin(ang)], [-np.sin(ang), np.cos(ang)]])  # PIL's rotate(35): counter-clockwise
  m = np.concatenate([rot, (c - rot @ c)[:, None]], axis=1)
  rotated = np.asarray(Image.fromarray(a).rotate(35, resample=Image.Resampling.BICUBIC, fillcolor=(128, 128, 128)))
  out.append(("astronaut rotated 35", rotated, [_affine_box(ASTRONAUT_FACE, m)]))
  small = np.full((640, 640, 3), 110, np.uint8)
  small[300:402, 300:402] = np.asarray(Image.fromarray(a).resize((102, 102), Image.Resampling.BICUBIC))
  out.append(("astronaut 20 px face", small, [tuple(300 + v * 102 / 512 for v in ASTRONAUT_FACE)]))
  shadow = af.copy()
  shadow[:, 224:] *= 0.15
  out.append(("astronaut half shadow", u8(shadow), [ASTRONAUT_FACE]))
  out.append(("astronaut very low contrast", u8(0.08 * af + 110), [ASTRONAUT_FACE]))
  out.append(("astronaut very dark, noisy", u8(255 * (af / 255) ** 4.0 + noisy - af), [ASTRONAUT_FACE]))
  lfw = data.lfw_subset()
  for k in range(0, 100, 16):
    out.append((f"lfw faces {k}", *_mosaic(lfw[k : min(k + 16, 100)])))
  for k in range(0, 100, 64):
    out.append((f"lfw 36 px faces {k}", *_mosaic(lfw[k : min(k + 64, 100)], cell=64, side=36, grid=8)))
  for k in range(0, 100, 16):
    dim = lfw[k : min(k + 16, 100)] * 0.25 + 0.35
    out.append((f"lfw low-contrast faces {k}", *_mosaic(dim)))
  for k in range(0, 100, 16):
    out.append((f"lfw faces rotated 30 {k}", *_mosaic(lfw[k : min(k + 16, 100)], rotate=30 if k % 32 else -30)))
  for name in NEGATIVES:
    out.append((name, media.as_rgb(getattr(data, name)()), []))
  for k in range(100, 200, 16):
    out.append((f"lfw non-faces {k}", _mosaic(lfw[k : min(k + 16, 200)])[0], []))
  return out


def _mosaic(
  crops: np.ndarray, cell: int = 128, side: int = 88, grid: int = 4, rotate: float = 0.0
) -> tuple[np.ndarray, list[tuple[float, ...]]]:
  """Crops [n, 25, 25] in [0, 1] upscaled to ``side`` px (and turned by ``rotate`` degrees), one per cell of a
  ``grid`` x ``grid`` mosaic on grey; their boxes (upright, the crop's square)."""
  img = Image.new("L", (grid * cell, grid * cell), 118)
  boxes = []
  for i, c in enumerate(crops):
    y, x = (i // grid) * cell + (cell - side) // 2, (i % grid) * cell + (cell - side) // 2
    face = Image.fromarray((c * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    if rotate:
      pad = Image.new("L", (cell, cell), 118)
      pad.paste(face, ((cell - side) // 2, (cell - side) // 2))
      face, y, x = (
        pad.rotate(rotate, resample=Image.Resampling.BICUBIC, fillcolor=118),
        y - (cell - side) // 2,
        x - (cell - side) // 2,
      )
    img.paste(face, (x, y))
    o = (cell - side) // 2 if rotate else 0
    boxes.append((float(x + o), float(y + o), float(x + o + side), float(y + o + side)))
  return media.as_rgb(np.asarray(img)), boxes


def score(found: list[faces.Face], truth: list[tuple[float, ...]], min_iou: float = 0.3) -> tuple[int, int]:
  """(faces hit, false positives): each detection, best score first, claims the best-overlapping free face."""
  free = list(truth)
  hits = fps = 0
  for f in sorted(found, key=lambda f: -f.score):
    best = max(free, key=lambda t: faces.iou(f.box, t), default=None)
    if best is not None and faces.iou(f.box, best) >= min_iou:
      free.remove(best)
      hits += 1
    else:
      fps += 1
  return hits, fps


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--backend", choices=faces.DETECTORS, default="jax")
  ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
  ap.add_argument("--verbose", action="store_true", help="per image hits and false positives")
  ap.add_argument("--cost", default="", help="configurations to time per still once compiled (comma-separated)")
  args = ap.parse_args(argv)
  det = faces.Detector(backend=args.backend)
  images = hard_set()
  n_faces = sum(len(t) for _, _, t in images)
  print(f"{len(images)} images, {n_faces} faces; backend {args.backend}")
  print(f"{'configuration':34s} {'recall':>8s} {'false pos':>10s} {'on negatives':>13s} {'s/image':>8s}")
  for config in args.configs.split(","):
    hits = fps = neg_fps = 0
    groups: dict[str, list[int]] = {}
    det.detect_passes(images[0][1], CONFIGS[config])  # compiled before the clock starts (for the sizes it has)
    t0 = time.perf_counter()
    for name, img, truth in images:
      found = det.detect_passes(img, CONFIGS[config])
      h, f = score(found, truth)
      hits, fps = hits + h, fps + f
      neg_fps += f if not truth else 0
      g = groups.setdefault(name.rstrip("0123456789 "), [0, 0])
      g[0], g[1] = g[0] + h, g[1] + len(truth)
      if args.verbose and (h < len(truth) or f):
        print(f"  {config}: {name}: {h}/{len(truth)} faces, {f} false positive(s)")
    dt = (time.perf_counter() - t0) / len(images)
    print(f"{config:34s} {hits / n_faces:8.1%} {fps:10d} {neg_fps:13d} {dt:8.2f}")
    if args.verbose:
      print("  " + ", ".join(f"{k} {h}/{n}" for k, (h, n) in groups.items() if n))
  if args.cost:
    cost(det, images, args.cost.split(","))
  return 0


def cost(det: faces.Detector, images, configs: list[str], repeats: int = 3) -> None:
  """Seconds per still once compiled (the s/image column above includes compiling each new image size): a photo
  whose face plain MTCNN finds, one where it finds none, and one without a face."""
  picks = {n: (img, t) for n, img, t in images if n in ("astronaut", "astronaut very low contrast", "coffee")}
  print(f"\nseconds per still, compiled ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}):")
  print(f"{'configuration':34s} " + " ".join(f"{n[:22]:>22s}" for n in picks))
  for config in configs:
    row = []
    for img, _ in picks.values():
      det.detect_passes(img, CONFIGS[config])
      t0 = time.perf_counter()
      for _ in range(repeats):
        det.detect_passes(img, CONFIGS[config])
      row.append((time.perf_counter() - t0) / repeats)
    print(f"{config:34s} " + " ".join(f"{v:22.2f}" for v in row), flush=True)


if __name__ == "__main__":
  sys.exit(main())
