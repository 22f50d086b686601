"""The selectable face detector: ``faces.Detector`` in JAX (the default) against the ``mtcnn`` package on TensorFlow
through the same interface (detect, relaxed retry, batched frames, the ONet refit of tracking), and prediction with
TensorFlow unimportable."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO
from PIL import Image

from megraph_jax.predict import faces

pytest.importorskip("mtcnn")
skdata = pytest.importorskip("skimage.data")

ASTRONAUT_FACE = (182, 64, 265, 172)  # x0, y0, x1, y1 of the face in skimage's astronaut (by eye)


@pytest.fixture(scope="module")
def detectors():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return faces.Detector(), faces.Detector(backend="mtcnn-tf")


def _close(a: list[faces.Face], b: list[faces.Face], px: float) -> float:
  assert len(a) == len(b), (len(a), len(b))
  worst = 0.0
  for fa, fb in zip(a, b):
    worst = max(worst, np.abs(fa.box - fb.box).max(), np.abs(fa.landmarks - fb.landmarks).max())
    assert abs(fa.score - fb.score) < 1e-3
  assert worst < px, worst
  return worst


def test_jax_is_the_default_and_a_wrong_name_is_an_error(detectors):
  assert detectors[0].backend == "jax" and faces.DETECTORS == ("jax", "mtcnn-tf")
  with pytest.raises(faces.AlignError, match="jax, mtcnn-tf"):
    faces.Detector(backend="tf")


def test_backends_agree_on_stills_retries_and_frames(detectors):
  ours, ref = detectors
  a = skdata.astronaut()
  print()
  for name, got, want in [
    ("astronaut", ours(a), ref(a)),
    ("relaxed, half-step pyramid", ours.detect_many([a], shift=0.84, **faces.RELAXED)[0], ref.detect_many(
      [a], shift=0.84, **faces.RELAXED)[0]),
  ]:  # fmt: skip
    print(f"{name}: {len(got)} face(s), max diff {_close(got, want, 0.01):.1e} px")
  assert faces.iou(ours(a)[0].box, ASTRONAUT_FACE) > 0.6
  from megraph_jax.data import synthetic_video  # pylint: disable=import-outside-toplevel

  frames = list(synthetic_video.frames(3, faces=2, seed=2))
  got, want = ours.detect_many(frames), ref.detect_many(frames)
  worst = max(_close(g, w, 0.01) for g, w in zip(got, want))
  print(f"3 frames batched: {[len(g) for g in got]} faces, max diff {worst:.1e} px")
  assert [len(g) for g in got] == [2, 2, 2]


def test_refine_follows_a_moved_face_as_the_tensorflow_path_does(detectors):
  """The tracking refit on the next frame's boxes: JAX's bilinear sampling vs OpenCV's warpAffine (fixed-point
  weights, taps outside blended with 0) feed ONet patches a little apart; the refined faces agree to 0.05 px."""
  ours, ref = detectors
  a = skdata.astronaut()
  moved = np.roll(a, (6, -4), axis=(0, 1))  # the face moved by (-4, 6) px
  found = ours(a)
  got, want = ours.refine(moved, [f.box for f in found]), ref.refine(moved, [f.box for f in found])
  worst = _close(got, want, 0.05)
  shift = (got[0].box[:2] + got[0].box[2:]) / 2 - (found[0].box[:2] + found[0].box[2:]) / 2
  print(f"refit: score {got[0].score:.4f}, centre moved {shift.round(1)} (true (-4, 6)), vs TF path {worst:.1e} px")
  assert got[0].score > 0.99 and np.abs(shift - (-4, 6)).max() < 2.5
  assert ours.refine(a, []) == []


def test_prediction_runs_without_tensorflow(tmp_path):
  """``python -m megraph_jax.predict`` on a photo and a video with TensorFlow (and Keras, TF Datasets) made
  unimportable: face rows come out, and nothing tried to import them."""
  cv2 = pytest.importorskip("cv2")
  del cv2
  from megraph_jax import loader  # pylint: disable=import-outside-toplevel
  from megraph_jax.data import synthetic_video  # pylint: disable=import-outside-toplevel
  from megraph_jax.model_factory import ModelSpec, build  # pylint: disable=import-outside-toplevel

  ckpt = loader.save(build(ModelSpec("resnet18", 12, 2, img_size=64)), tmp_path / "ckpt")
  inputs = tmp_path / "inputs"
  inputs.mkdir()
  Image.fromarray(skdata.astronaut()).save(inputs / "astronaut.png")
  synthetic_video.write(inputs / "clip.mp4", 8, faces=2, seed=2)
  out = tmp_path / "rows.csv"
  # Not installed, as far as Python can tell: imports fail and importlib.util.find_spec says None. Every attempt to
  # import one (an import statement or importlib.import_module) is recorded, in case one was caught and ignored.
  code = f"""
import builtins, importlib, sys
BLOCKED = ("tensorflow", "keras", "tf_keras", "tensorflow_datasets")
for name in BLOCKED:
  sys.modules[name] = None
attempts = []
def recorded(imp):
  def wrapper(name, *args, **kwargs):
    if name.split(".")[0] in BLOCKED:
      attempts.append(name)
    return imp(name, *args, **kwargs)
  return wrapper
builtins.__import__ = recorded(builtins.__import__)
importlib.import_module = recorded(importlib.import_module)
from megraph_jax.predict import predictor
status = predictor.main(["-c", {str(ckpt)!r}, {str(inputs)!r}, "-o", {str(out)!r}, "--no-progress", "--redetect", "4"])
print("attempts:", attempts)
print("loaded:", sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in BLOCKED + ("mtcnn",)))
sys.exit(status)
"""
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  assert "attempts: []" in run.stdout and "loaded: []" in run.stdout, run.stdout
  with open(out, newline="") as f:
    rows = list(csv.DictReader(f))
  photo = [r for r in rows if r["file"].endswith("astronaut.png")]
  video = [r for r in rows if r["file"].endswith("clip.mp4")]
  assert [r["status"] for r in photo] == ["ok"]
  box = [float(photo[0][k]) for k in ("x0", "y0", "x1", "y1")]
  assert faces.iou(box, ASTRONAUT_FACE) > 0.6, box
  assert len(video) == 16 and all(r["status"] == "ok" for r in video)  # 8 frames x 2 faces, tracked between


def test_track_along_frames_is_the_refit_frame_by_frame(detectors):
  """``Detector.track`` (one scan on the device along the frames) gives the faces of ``refine`` chained frame by
  frame (each frame from the faces refined on the one before), and the TensorFlow path's within its refit tolerance."""
  from megraph_jax.data import synthetic_video  # pylint: disable=import-outside-toplevel

  ours, ref = detectors
  frames = list(synthetic_video.frames(4, faces=2, seed=2))
  start = [f.box for f in ours.detect_many(frames[:1])[0]]
  along, tf_along = ours.track(frames[1:], start), ref.track(frames[1:], start)
  boxes, worst = start, 0.0
  for frame, got, want in zip(frames[1:], along, tf_along):
    chained = ours.refine(frame, boxes)
    worst = max(worst, _close(got, chained, 5e-3))  # float32 squares on the device vs float64
    _close(got, want, 0.05)
    boxes = [f.box for f in chained]
  print(f"track along 3 frames vs refine frame by frame: {worst:.1e} px")
  assert len(along) == 3 and [len(g) for g in along] == [2, 2, 2]
  assert ours.track(frames[1:], []) == [[], [], []]
