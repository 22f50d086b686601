"""MTCNN in JAX (``megraph_jax.predict.mtcnn``) against the ``mtcnn`` package on TensorFlow, the reference: each network
on the same inputs, the pyramid's area resizing and the crops, and whole detections on photos of several sizes (the
same faces, boxes and landmarks to 0.02 px). Measured differences are printed (``pytest -s``)."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from megraph_jax.predict import faces, media
from megraph_jax.predict import mtcnn as jm

pytest.importorskip("mtcnn")
skdata = pytest.importorskip("skimage.data")

NET_TOL = 1e-5  # per-network outputs (measured <= 6e-7)
PX_TOL = 0.02  # boxes and landmarks, px of the image MTCNN runs on (measured <= 5e-4)
SCORE_TOL = 1e-4  # face probabilities (measured <= 1e-5)


@pytest.fixture(scope="module")
def tf():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from megraph_jax import optional  # pylint: disable=import-outside-toplevel

  return optional.tensorflow()


@pytest.fixture(scope="module")
def reference(tf):
  from mtcnn import MTCNN  # pylint: disable=import-outside-toplevel

  return MTCNN()


@pytest.fixture(scope="module")
def ours():
  return jm.MTCNN()


@pytest.fixture(scope="module")
def astronaut():
  return skdata.astronaut()


@pytest.mark.parametrize(
  "stage, shape",
  [(1, (2, 57, 43, 3)), (1, (1, 12, 12, 3)), (2, (7, 24, 24, 3)), (3, (7, 48, 48, 3))],
  ids=["pnet-odd", "pnet-12", "rnet", "onet"],
)
def test_networks_match_keras(reference, ours, stage, shape):
  x = np.random.default_rng(stage).uniform(-1, 1, shape).astype(np.float32)
  want = [t.numpy() for t in reference.get_stage(stage_id=stage).model(x)]
  got = [np.asarray(t) for t in (ours.pnet, ours.rnet, ours.onet)[stage - 1](x)]
  assert [g.shape for g in got] == [w.shape for w in want]
  diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
  print(f"stage {stage} {shape}: max |jax - keras| = {diff:.2e}")
  assert diff < NET_TOL, diff


def test_weights_are_read_without_tensorflow():
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  code = (
    "import sys; sys.modules['tensorflow'] = None\n"
    "from megraph_jax.predict import mtcnn\n"
    "print(sum(a.size for n in ('pnet', 'rnet', 'onet') for a in mtcnn.read_weights(n)))\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
  assert int(out.stdout.split()[-1]) > 400_000


@pytest.mark.parametrize("size, min_face", [((512, 512), 24), ((360, 640), 20), ((300, 451), 12)])
def test_pyramid_canvas_matches_tf_area_resize(tf, astronaut, size, min_face):
  img = np.asarray(Image.fromarray(astronaut).resize(size[::-1], Image.Resampling.BILINEAR))
  plan = jm.Plan(*size, min_face)
  canvas = plan.canvas_of(img[None])
  x = ((img.astype(np.float64) - 127.5) / 128)[None]
  worst = 0.0
  for k, (scale, h, w) in enumerate(plan.levels):
    want = tf.image.resize(x, np.asarray(size) * scale, method="area").numpy()
    assert want.shape[1:3] == (h, w)
    worst = max(worst, float(np.abs(plan.level_of(canvas, k) - want).max()))
  print(f"{size}: {len(plan.levels)} levels on a {plan.canvas} canvas, max |jax - tf| = {worst:.1e}")
  assert worst < 2e-6, worst
  assert all(min(h, w) >= jm.MIN_LEVEL for _, h, w in plan.levels)


def test_pnet_on_the_canvas_gives_each_level_its_own_outputs(ours, astronaut):
  plan = jm.Plan(150, 225, 12)  # levels of odd and even sides, the canvas's SAME padding at its edges
  img = np.asarray(Image.fromarray(astronaut).resize((225, 150)))
  canvas = plan.canvas_of(img[None])
  pnet = jax.jit(lambda x, inside=None: ours.pnet(x, inside))
  reg, prob = (np.asarray(a) for a in pnet(canvas, plan.maps["inside"]))
  worst = 0.0
  for k, (oy, ox) in enumerate(plan.origins):
    lreg, lprob = (np.asarray(a) for a in pnet(plan.level_of(canvas, k)))
    gh, gw = lprob.shape[1:3]
    cell = (slice(None), slice(oy // 2, oy // 2 + gh), slice(ox // 2, ox // 2 + gw))
    worst = max(worst, float(np.abs(prob[cell] - lprob).max()), float(np.abs(reg[cell] - lreg).max()))
  print(f"PNet on the canvas vs per level: max diff {worst:.1e}")
  assert worst < 1e-5, worst


def test_crops_match_tf_crop_and_resize(tf, astronaut):
  img = ((astronaut[:300, :451].astype(np.float32) - 127.5) / 128)[None]
  rng = np.random.default_rng(0)
  x0, y0 = rng.uniform(-60, 420, 40), rng.uniform(-60, 280, 40)
  side = rng.uniform(5, 150, 40)
  boxes = np.stack([x0, y0, x0 + side, y0 + side * rng.uniform(0.8, 1.2, 40)], axis=1)
  norm = boxes[:, [1, 0, 3, 2]] / np.array([300, 451, 300, 451])
  want = tf.image.crop_and_resize(img, norm.astype(np.float32), np.zeros(40, np.int32), (24, 24)).numpy()
  padded = np.zeros((1, 320, 512, 3), np.float32)  # zero-padded beyond the image, as the detector passes frames
  padded[:, :300, :451] = img
  got = np.asarray(jm.crop_and_resize(padded, boxes[None].astype(np.float32), 24, 300, 451))[0]
  print(f"crops: max |jax - tf| = {np.abs(got - want).max():.1e}")
  # Boxes: float32 here, float64 divided then rounded to float32 in the package: sampling points 1 ulp apart.
  np.testing.assert_allclose(got, want, atol=1e-4)


def _photos():
  """name -> list of RGB frames (one size each) as prediction reads them."""
  a = skdata.astronaut()
  gray = media.as_rgb(np.asarray(Image.fromarray(a).convert("L")))
  rgba = np.dstack([a, np.linspace(96, 255, a.shape[1]).astype(np.uint8)[None, :].repeat(a.shape[0], 0)])
  small = np.full((1200, 1600, 3), 120, np.uint8)  # the astronaut at 0.5: a face of about 42 x 54 px
  small[500:756, 700:956] = np.asarray(Image.fromarray(a).resize((256, 256), Image.Resampling.BICUBIC))
  large = np.asarray(Image.fromarray(a[20:260, 120:300]).resize((450, 600), Image.Resampling.BICUBIC))  # face ~400
  from megraph_jax.data import synthetic_video  # pylint: disable=import-outside-toplevel

  return {
    "astronaut": [a],
    "grayscale": [gray],
    "rgba": [media.as_rgb(rgba)],
    "small-face": [small],
    "large-face": [large],
    "video-2-frames": list(synthetic_video.frames(2, faces=2, seed=2)),
  }


PHOTOS = _photos()


def _copies(frames):
  """The copies and min face size :class:`faces.Detector` gives MTCNN."""
  h, w = frames[0].shape[:2]
  scale, min_face = faces.detection_scale(h, w)
  size = (round(w * scale), round(h * scale))
  sx = size[0] / w if scale < 1 else 1.0
  copies = [np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)) if scale < 1 else f for f in frames]
  return copies, max(faces.MTCNN_WINDOW, int(min_face * sx))


def _by_image_and_score(rows):
  rows = np.asarray(rows, np.float64).reshape(-1, 16)
  return rows[np.lexsort((-rows[:, 5], rows[:, 0]))]


@pytest.mark.parametrize("name", list(PHOTOS))
def test_detections_match_the_package(reference, ours, name):
  copies, min_face = _copies(PHOTOS[name])
  want = _by_image_and_score(
    reference.detect_faces(list(copies), output_type="numpy", box_format="xyxy", min_face_size=min_face)
  )
  got = _by_image_and_score(ours.detect(copies, min_face_size=min_face))
  print(f"{name} {copies[0].shape[:2]} x{len(copies)}: {len(got)} faces (package {len(want)})", end="")
  assert len(want) > 0
  assert got.shape == want.shape and np.array_equal(got[:, 0], want[:, 0]), (got[:, :6], want[:, :6])
  box, marks = np.abs(got[:, 1:5] - want[:, 1:5]).max(), np.abs(got[:, 6:] - want[:, 6:]).max()
  score = np.abs(got[:, 5] - want[:, 5]).max()
  print(f", max diff: box {box:.1e} px, landmarks {marks:.1e} px, score {score:.1e}")
  assert box < PX_TOL and marks < PX_TOL and score < SCORE_TOL, (box, marks, score)


def test_finds_the_face_where_the_package_finds_none(reference, ours, astronaut):
  """640 x 480 (VGA): the package's pyramid reaches a 10 px level, on which its PNet fails (it raises, or on
  older stacks reports no face); the levels below 11 px are left out here, and the face is found with the
  package's box on other sizes."""
  frame = np.full((480, 640, 3), 120, np.uint8)
  frame[:, 80:560] = np.asarray(Image.fromarray(astronaut).resize((480, 480), Image.Resampling.BILINEAR))
  copies, min_face = _copies([frame])
  assert min(h for _, h, _ in jm.pyramid(480, 640, min_face)) >= jm.MIN_LEVEL
  got = ours.detect(copies, min_face_size=min_face)
  try:  # mtcnn 1.0.0 with Keras 3 raises on the 10 px level (an empty convolution); older stacks return no rows
    want = reference.detect_faces(copies, output_type="numpy", box_format="xyxy", min_face_size=min_face)
  except ValueError as err:
    assert "empty output" in str(err), err
    want = []
  print(f"640x480: {len(got)} face(s); the package: {len(want)}")
  assert len(want) == 0
  assert len(got) == 1 and got[0, 5] > 0.99
  # The same face on a 640 x 490 frame (the package's pyramid stops at 11 px there): same box to 0.1 px.
  taller = np.full((490, 640, 3), 120, np.uint8)
  taller[:480] = frame
  ref = np.asarray(reference.detect_faces([taller], output_type="numpy", box_format="xyxy", min_face_size=min_face))
  assert len(ref) == 1
  assert np.abs(ref[0, 1:5] - got[0, 1:5]).max() < 5.0  # a different pyramid (480 vs 490 px): close, not equal


def test_refit_matches_the_detection_on_its_own_box(ours, astronaut):
  """ONet re-run on a detection's squared box (the tracking path) gives a confident face close to it."""
  rows = ours.detect(astronaut[None], min_face_size=24)
  x0, y0, x1, y1 = rows[0, 1:5]
  side = max(x1 - x0, y1 - y0)
  sq = np.array([[(x0 + x1 - side) / 2, (y0 + y1 - side) / 2, (x0 + x1 + side) / 2, (y0 + y1 + side) / 2]])
  reg, marks, prob = ours.refit(astronaut, sq)
  assert reg.shape == (1, 4) and marks.shape == (1, 10) and prob[0] > 0.99
  assert np.abs(reg).max() < 0.25  # the box moves little (a refined box is not a fixed point of ONet)


def test_keyframes_with_few_candidates_share_one_rnet_shape(ours, astronaut, monkeypatch):
  """Frames of one size whose PNet candidates differ in number (9 on noise, 28 on a corner of the astronaut) run
  RNet on one box count (``RNET_BOXES``), so a video's keyframes compile it once (a count rounded up per frame, 16
  vs 32 here, compiled RNet again in the middle of a video)."""
  calls, real = [], jm._refine

  def spy(*args, **kwargs):  # (graphdef, state, images, hw, boxes [B, K, 4], valid [B, K], threshold)
    calls.append((args[4].shape, int(np.asarray(args[5]).sum())))
    return real(*args, **kwargs)

  monkeypatch.setattr(jm, "_refine", spy)
  noise = np.random.default_rng(0).integers(0, 256, astronaut.shape).astype(np.uint8)
  corner = np.pad(astronaut[:200, 100:300], ((0, 312), (0, 312), (0, 0)))
  for frame in (noise, corner):
    ours.detect(frame)
  (shape_a, n_a), (shape_b, n_b) = calls
  assert jm._pow2(n_a, jm.CHUNK) != jm._pow2(n_b, jm.CHUNK), calls  # counts that round to different powers of 2
  assert shape_a == shape_b == (1, jm.RNET_BOXES, 4), calls
