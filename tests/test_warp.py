"""The similarity warp on the device (``megraph_jax.predict.warp``) against PIL's affine transform, the alignment the
project's crops were first made with: real photos, grayscale and RGBA inputs, faces cut by the frame's border,
strong shrinking (PIL's box reduction first), the AU rows of a model on the crops, and one compile per video size."""

import numpy as np
import pytest
from PIL import Image

from megraph_jax.data import synthetic_video
from megraph_jax.model_factory import ModelSpec, build
from megraph_jax.predict import faces, media, warp
from megraph_jax.predict import predictor as predict

skdata = pytest.importorskip("skimage.data")

# The five landmarks MTCNN (JAX) finds in scikit-image's astronaut, and in frame 0 of synthetic_video (seed 2).
ASTRONAUT = np.array([[203.5, 100.8], [247.5, 103.7], [225.4, 128.9], [201.4, 139.7], [245.1, 142.2]])
VIDEO = [
  np.array([[156.9, 163.9], [200.1, 161.8], [176.2, 190.5], [162.8, 212.8], [194.4, 211.3]]),
  np.array([[474.7, 187.7], [510.5, 182.2], [496.0, 207.3], [484.1, 225.8], [511.0, 222.1]]),
]


def _pil_warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
  """The reference, written out from PIL: a crop shrinking the source below half size reads it box-reduced
  (``Image.reduce``) by ``int(1 / scale)``; then ``Image.transform(AFFINE, BICUBIC)`` with the inverse map."""
  m = np.asarray(matrix, np.float64).copy()
  scale = np.sqrt(abs(np.linalg.det(m[:, :2])))
  factor = int(1.0 / scale) if scale < 0.5 else 1
  img = Image.fromarray(image)
  if factor > 1:
    img = img.reduce(factor)
    m[:, :2] *= factor
  inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
  return np.asarray(img.transform((size, size), Image.Transform.AFFINE, tuple(inv.ravel()), Image.Resampling.BICUBIC))


def _similarity(rng, scale: tuple[float, float], size: int, centre_in: tuple[int, int]) -> np.ndarray:
  """A random similarity (source -> crop px) putting a random point of a ``centre_in`` (h, w) image at the crop's
  centre, turned up to 0.4 rad and scaled by ``scale``."""
  ang, s = rng.uniform(-0.4, 0.4), rng.uniform(*scale)
  m = np.array([[s * np.cos(ang), -s * np.sin(ang), 0.0], [s * np.sin(ang), s * np.cos(ang), 0.0]])
  m[:, 2] = size / 2 - m[:, :2] @ (rng.uniform(0, 1, 2) * centre_in[::-1])
  return m


def _cases():
  """(name, RGB image, matrices) on real photos: aligned faces and random similarities, border and reduction cases."""
  rng = np.random.default_rng(0)
  a = skdata.astronaut()
  gray = media.as_rgb(np.asarray(Image.fromarray(a).convert("L")), "gray")
  rgba = np.dstack([a, np.where(np.arange(512)[:, None] < 256, 255, 96).repeat(512, 1).astype(np.uint8)])
  frame = next(iter(synthetic_video.frames(1, faces=2, seed=2)))
  bigger = np.asarray(Image.fromarray(a).resize((2048, 2048), Image.Resampling.BICUBIC))  # 176 px: factor 2
  return [
    ("astronaut", a, [faces.alignment(ASTRONAUT)]),
    ("astronaut, grayscale", gray, [faces.alignment(ASTRONAUT)]),
    ("astronaut, RGBA half transparent", media.as_rgb(rgba, "rgba"), [faces.alignment(ASTRONAUT)]),
    ("video frame, two faces", frame, [faces.alignment(lm) for lm in VIDEO]),
    ("face cut by the left/top border", np.ascontiguousarray(a[90:, 215:]), [faces.alignment(ASTRONAUT - [215, 90])]),
    ("face cut by the right/bottom border", np.ascontiguousarray(a[:130, :240]), [faces.alignment(ASTRONAUT)]),
    ("astronaut x4 (reduced by 2)", bigger, [faces.alignment(ASTRONAUT * 4)]),
    ("random similarities", a, [_similarity(rng, (0.6, 1.6), faces.ALIGN_SIZE, (512, 512)) for _ in range(6)]),
    ("random, reduced by 2-9", a, [_similarity(rng, (0.1, 0.45), faces.ALIGN_SIZE, (512, 512)) for _ in range(6)]),
  ]


@pytest.fixture(scope="module")
def crops():
  """(name, JAX crops, PIL crops) of every case, 256 px."""
  out = []
  for name, image, mats in _cases():
    got = warp.align_faces([image], [0] * len(mats), mats, faces.ALIGN_SIZE)
    want = np.stack([_pil_warp(image, m, faces.ALIGN_SIZE) for m in mats])
    out.append((name, got, want))
  return out


def test_crops_equal_pil_to_one_grey_level(crops):
  """Measured (float32 here, double in PIL; both truncate): at most 1 grey level apart, on 0.000-0.011% of the values
  per case (mean |diff| <= 1.1e-4); the black fill outside the frame and the edge clamping agree."""
  print()
  total, differing = 0, 0
  for name, got, want in crops:
    diff = np.abs(got.astype(int) - want)
    print(f"{name:38s} max {diff.max()}  differing {100 * (diff > 0).mean():.3f}%  mean {diff.mean():.1e}")
    assert got.shape == want.shape and got.dtype == np.uint8
    assert diff.max() <= 1, name
    assert (diff > 0).mean() < 0.001, name  # measured <= 0.011%
    total, differing = total + diff.size, differing + (diff > 0).sum()
  print(f"all: {100 * differing / total:.4f}% of the values differ")
  assert differing / total < 0.0003, differing / total
  border = dict((n, g) for n, g, _ in crops)
  assert (border["face cut by the left/top border"][0, :, :20] == 0).all()  # outside the frame: black
  gray = border["astronaut, grayscale"]
  assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()  # channels stay apart


def test_au_rows_within_the_csv_precision(crops):
  """A model's probabilities on the device crops and on PIL's agree within the CSV's 4 decimals (measured: 3.8e-6 with
  a random ResNet-18 at 224 px, whose input is the crop's centre, unresized)."""
  pr = predict.Predictor(build(ModelSpec("resnet18", 12, 2, img_size=224)), batch_size=8)
  got = np.concatenate([g for _, g, _ in crops])
  want = np.concatenate([w for _, _, w in crops])
  diff = np.abs(pr.predict_crops(list(got))["probs"] - pr.predict_crops(list(want))["probs"]).max()
  print(f"\nprobabilities on {len(got)} crops: max |device - PIL| = {diff:.1e}")
  assert diff < 5e-5  # a CSV row rounds to 1e-4


def test_a_video_size_compiles_once():
  """Batches of 1-4 frames with 1-7 faces (several calls when they are more than ``faces_to``) run one compiled
  shape; a face shrunk below half size adds the reduction's one; frames of another size compile anew."""
  rng = np.random.default_rng(1)
  frames = [rng.integers(0, 256, (72, 96, 3), dtype=np.uint8) for _ in range(4)]
  start = warp.warp_faces._cache_size()
  for n_frames, n_faces in ((1, 1), (4, 3), (2, 7), (3, 4)):
    mats = [_similarity(rng, (0.6, 1.6), 32, (72, 96)) for _ in range(n_faces)]
    which = rng.integers(0, n_frames, n_faces)
    got = warp.align_faces(frames[:n_frames], which, mats, 32, frames_to=4, faces_to=4)
    want = np.stack([_pil_warp(frames[i], m, 32) for i, m in zip(which, mats)])
    assert got.shape == (n_faces, 32, 32, 3) and np.abs(got.astype(int) - want).max() <= 1
  assert warp.warp_faces._cache_size() - start == 1
  warp.align_faces(frames[:1], [0], [_similarity(rng, (0.2, 0.3), 32, (72, 96))], 32, frames_to=4, faces_to=4)
  assert warp.warp_faces._cache_size() - start == 2
