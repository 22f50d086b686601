"""Prediction at video speed: the pipelined path gives the simple path's rows, streams (bounded memory, rows on disk
as they are produced), finds faces in large / grayscale / RGBA photos and small faces, and reads live sources."""

import csv
import os
import time
import tracemalloc

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

try:  # torchvision segfaults when imported after TensorFlow (which MTCNN loads): import it first
  import torchvision  # noqa: F401
except ImportError:
  pass

from megraph_jax import loader
from megraph_jax.data import synthetic_video
from megraph_jax.model_factory import ModelSpec, build, eval_view
from megraph_jax.predict import faces, media, warp
from megraph_jax.predict import predictor as predict

ASTRONAUT_FACE = (182, 64, 265, 172)  # x0, y0, x1, y1 of the face in skimage's astronaut (by eye)


@pytest.fixture(scope="module")
def model():
  return build(ModelSpec("resnet18", 12, 2, img_size=64))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, model):
  return loader.save(model, tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
  pytest.importorskip("cv2")
  # seed 2: MTCNN finds both faces on every frame with full detection (checked), so the paths can be compared
  return synthetic_video.write(tmp_path_factory.mktemp("video") / "two_faces.mp4", 20, faces=2, seed=2)


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _iou(a, b):
  return faces.iou(tuple(a), tuple(b))


def _shift(a, b, r=4):
  """Largest |dx|, |dy| of the shift (64 px scale) that best matches crop ``b`` to crop ``a``."""
  a, b = (np.asarray(Image.fromarray(c).convert("L").resize((64, 64)), np.float32) for c in (a, b))
  err = {
    (dy, dx): np.abs(a[16:48, 16:48] - b[16 + dy : 48 + dy, 16 + dx : 48 + dx]).mean()
    for dy in range(-r, r + 1)
    for dx in range(-r, r + 1)
  }
  return max(abs(v) for v in min(err, key=err.get))


def _model_on_crops(model, crops):
  """AU probabilities of the model run directly on aligned crops, through the official eval transform written out
  (torchvision's Resize to 256/224 of the side, CenterCrop, ToTensor, Normalize with ImageNet's numbers)."""
  from torchvision import transforms as T  # pylint: disable=import-outside-toplevel

  size = ModelSpec.of(model).img_size
  official = T.Compose(
    [
      T.Resize(round(size * 256 / 224)),
      T.CenterCrop(size),
      T.ToTensor(),
      T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
  )
  x = np.stack([official(Image.fromarray(c)).numpy().transpose(1, 2, 0) for c in crops])
  return np.asarray(eval_view(model)(jnp.asarray(x))["au_probs"])


def test_pipelined_rows_equal_the_simple_path(model, video):
  """Same faces, order and track ids; with full detection on every frame also the same numbers; tracked crops stay
  aligned (the tracking policy of megraph_jax.predict.pipeline); every row's probabilities are the model's on that
  row's own aligned crop; the alignment warp (on the device, batched) compiles once for the video."""
  pytest.importorskip("mtcnn")
  compiled = warp.warp_faces._cache_size()
  simple = list(predict.Predictor(model, batch_size=4, threads=False, redetect=1).iter_predict(video))
  batched = list(predict.Predictor(model, batch_size=4, redetect=1).iter_predict(video))
  tracked_pr = predict.Predictor(model, batch_size=4, redetect=8)
  tracked = list(tracked_pr.iter_predict(video))
  key = [(p.frame, p.face, p.status) for p in simple]
  assert len(key) == 40 and all(s == "ok" for _, _, s in key)  # 20 frames x 2 faces
  assert [(p.frame, p.face, p.status) for p in batched] == key
  assert [(p.frame, p.face, p.status) for p in tracked] == key
  for s, b in zip(simple, batched):  # threads and batched detection change nothing
    np.testing.assert_allclose(b.box, s.box, atol=1e-3)
    np.testing.assert_allclose(b.probs, s.probs, atol=1e-5)
  assert tracked_pr.times.seconds["track"] > 0  # frames between keyframes were tracked, not detected
  assert tracked_pr._fn._cache_size() == 1  # one model batch shape: compiled once
  # the alignment warp on the device: frames and faces padded to the batch, so one shape for the three paths
  assert warp.warp_faces._cache_size() - compiled <= 1
  for s, t in zip(simple, tracked):
    assert _iou(s.box, t.box) > 0.8, (s.frame, s.box, t.box)
    assert _shift(s.crop, t.crop) <= 1, (s.frame, s.face)  # at most 1/64 of the crop (4 px of 256) apart
    np.testing.assert_allclose(t.probs, s.probs, atol=0.1)
  rows = simple + batched + tracked  # each path against the model run here on its crops (batching, order, transform)
  want = _model_on_crops(model, [p.crop for p in rows])
  got = np.stack([p.probs for p in rows])
  err = np.abs(got - want).max()
  faces = want[: len(simple)].reshape(20, 2, -1)  # a face swapped with the other of its frame would be caught:
  apart = np.abs(faces[:, 0] - faces[:, 1]).max(-1).min()
  print(f"rows: max |pipeline - model on the crops| = {err:.2e}; the two faces of a frame >= {apart:.2e} apart")
  assert err < 1e-6, f"rows {err:.2e} off the model on their crops"
  assert apart > 1e-3, f"the two faces of a frame score alike ({apart:.2e}): a swap would go unseen"


def test_memory_does_not_grow_with_video_length(tmp_path, ckpt):
  """Python-side peak memory (NumPy arrays included) of the CLI on 12 vs 60 frames, rows all written.

  Measured (2-core x86): peaks 48.4 MB at 12 frames and 48.2 MB at 60 (the start-up's: a bounded pipeline stays
  below it); with every decoded frame kept alive (640x360, 0.69 MB each) 73.6 MB at 60 frames. Under load the
  queues ahead of a slower model fill further on 60 frames than on 12 (68.9 vs 72.8 MB seen), so the bound is in
  frames, not a percentage."""
  pytest.importorskip("mtcnn")
  short = synthetic_video.write(tmp_path / "short.mp4", 12, seed=2)
  long = synthetic_video.write(tmp_path / "long.mp4", 60, seed=2)
  args = ["-c", str(ckpt), "--batch-size", "4", "--smooth", "5", "--no-progress"]
  assert predict.main([*args, short, "-o", str(tmp_path / "warm.csv")]) == 0  # one-time: compile, MTCNN weights
  peaks = []
  for name, path in (("short", short), ("long", long)):
    tracemalloc.start()
    assert predict.main([*args, path, "-o", str(tmp_path / f"{name}.csv")]) == 0
    peaks.append(tracemalloc.get_traced_memory()[1])
    tracemalloc.stop()
  assert len(_rows(tmp_path / "long.csv")) == 60
  # 48 more frames held would be +33 MB; the bounded queues may fill only on the longer video (seen: +3.8 MB under
  # load), so up to 16 frames' worth is let through, a third of what holding the video would add.
  frame_bytes = 640 * 360 * 3
  assert peaks[1] - peaks[0] < 16 * frame_bytes, [p / 2**20 for p in peaks]


def _rows_on_disk(folder, name):
  """Complete CSV rows (header excluded) of the largest file in ``folder`` whose name holds ``name``: the output
  itself or a partial file beside it, wherever a run streams its rows."""
  counts = [p.read_text().count("\n") - 1 for p in folder.iterdir() if name in p.name]
  return max([0, *counts])


def test_a_crash_at_frame_n_leaves_n_rows(tmp_path, ckpt, monkeypatch):
  """Rows reach the disk as they are produced (read from inside the run, while the decoder waits), and a crash
  leaves them."""
  frames = list(synthetic_video.frames(10, seed=1))
  during = []

  def crashing(paths, every=1, max_frames=None, plain=False):
    for i, f in enumerate(frames):
      yield media.Frame("clip.mp4", i, f, time=i / 25, is_video=True)
    # The decoder stalls here: the two full batches of 4 (frames 0-7) are predicted and must be in the file now;
    # frames 8, 9 wait for a full batch. A writer that buffered its rows until the end would show none.
    deadline = time.monotonic() + 20
    while _rows_on_disk(tmp_path, "rows.csv") < 8 and time.monotonic() < deadline:
      time.sleep(0.02)
    during.append(_rows_on_disk(tmp_path, "rows.csv"))
    raise RuntimeError("decoder died")

  monkeypatch.setattr(media, "iter_media", crashing)
  out = tmp_path / "rows.csv"
  with pytest.raises(RuntimeError, match="decoder died"):
    predict.main(["-c", str(ckpt), "clip.mp4", "--no-align", "--batch-size", "4", "-o", str(out), "--no-progress"])
  assert during == [8], f"{during[0]} rows on disk while the run went on, 8 predicted"
  assert [r["frame"] for r in _rows(str(out) + ".partial")] == [str(i) for i in range(10)]  # -o: only on success
  assert not out.exists()


def test_faces_in_large_grayscale_rgba_photos_and_small_faces(tmp_path, ckpt):
  pytest.importorskip("mtcnn")
  img = pytest.importorskip("skimage.data").astronaut()
  big = Image.fromarray(img).resize((2560, 2560), Image.Resampling.BICUBIC)  # face about 420 px
  big.convert("L").save(tmp_path / "a_large_gray.png")
  rgba = Image.fromarray(img).convert("RGBA")
  rgba.putalpha(Image.fromarray(np.full(img.shape[:2], 255, np.uint8)))
  rgba.save(tmp_path / "b_rgba.png")
  small = np.full((1200, 1600, 3), 120, np.uint8)  # the astronaut at 0.5: a face of about 42 x 54 px
  small[500:756, 700:956] = np.asarray(Image.fromarray(img).resize((256, 256), Image.Resampling.BICUBIC))
  Image.fromarray(small).save(tmp_path / "c_small_face.png")
  Image.fromarray(np.full((1500, 2000, 3), 200, np.uint8)).save(tmp_path / "d_blank.png")
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "e_tiny.png")
  out = tmp_path / "rows.csv"
  assert predict.main(["-c", str(ckpt), str(tmp_path), "-o", str(out), "--no-progress"]) == 0
  rows = _rows(out)
  assert [(os.path.basename(r["file"]), r["status"]) for r in rows] == [
    ("a_large_gray.png", "ok"),
    ("b_rgba.png", "ok"),
    ("c_small_face.png", "ok"),
    ("d_blank.png", "no_face"),
    ("e_tiny.png", "no_face"),
  ]
  box = lambda r: [float(r[k]) for k in ("x0", "y0", "x1", "y1")]  # noqa: E731
  assert _iou(box(rows[0]), [v * 5 for v in ASTRONAUT_FACE]) > 0.5, box(rows[0])
  assert _iou(box(rows[1]), ASTRONAUT_FACE) > 0.6
  assert _iou(box(rows[2]), [o + v / 2 for o, v in zip((700, 500, 700, 500), ASTRONAUT_FACE)]) > 0.5, box(rows[2])
  pr = predict.Predictor.from_checkpoint(ckpt)  # arrays: grayscale and RGBA as well
  assert [p.status for p in pr.predict_image(np.asarray(big.convert("L"))[::4, ::4])] == ["ok"]
  with pytest.raises(media.MediaError, match="photo.jpg: expected a uint8 image"):
    pr.predict_image(np.zeros((4, 4, 2), np.uint8), name="photo.jpg")


def test_camera_source_streams_rows_and_a_bad_one_is_exit_2(tmp_path, ckpt, video, capsys):
  pytest.importorskip("mtcnn")
  out = tmp_path / "live.csv"
  code = predict.main(["-c", str(ckpt), "--camera", str(video), "-o", str(out), "--max-frames", "9", "--no-progress"])
  assert code == 0
  rows = _rows(out)
  assert [(r["file"], r["frame"], r["face"]) for r in rows] == [
    (str(video), str(i), str(k)) for i in range(9) for k in (0, 1)
  ]
  assert all(r["status"] == "ok" for r in rows) and float(rows[-1]["time"]) > 0
  assert predict.main(["-c", str(ckpt), "--camera", str(tmp_path / "no_such_stream.mp4"), "--no-progress"]) == 2
  assert "no_such_stream.mp4: cannot open this capture source" in capsys.readouterr().err


class _FakeDetector:
  """Frames whose pixels are 1 hold one face at a fixed box, 2 a face ONet loses; records every call."""

  def __init__(self):
    self.calls = []

  @staticmethod
  def _face(score=0.99):
    box = np.array([8.0, 8.0, 40.0, 40.0])
    return faces.Face(box=box, score=score, landmarks=faces.template(32) + 8.0)

  def detect_many(self, images, **kw):
    self.calls.append(("detect", len(images)))
    return [[self._face()] if im[0, 0, 0] else [] for im in images]

  def track(self, images, boxes):
    self.calls.append(("track", len(images)))
    return [[self._face(0.99 if image[0, 0, 0] == 1 else 0.1) for _ in boxes] for image in images]

  def retry(self, image):
    return []


def test_detection_policy_keyframes_tracking_fallback_and_empty_scenes():
  """megraph_jax.predict.pipeline's policy with a fake detector: full detection on every K-th frame (batched), ONet
  tracking between, a full detection when a face is lost, and on every frame (batched) while no face is tracked."""
  from megraph_jax.predict import pipeline  # pylint: disable=import-outside-toplevel

  det = _FakeDetector()
  finder = pipeline.FaceFinder(lambda c: np.zeros((4, 4, 3), np.float32), detector=lambda: det, redetect=4, batch=4)
  values = [1, 1, 1, 1, 1, 2, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1]  # a face; ONet loses it at 5; gone 8..12; back at 13
  frames = _AllReady(
    media.Frame("v.mp4", i, np.full((48, 48, 3), v, np.uint8), is_video=True) for i, v in enumerate(values)
  )
  out = [rows for rows, _ in finder(frames)]
  assert [r[0].status for r in out] == ["ok"] * 8 + ["no_face"] * 5 + ["ok"] * 3
  assert [r[0].face for r in out if r[0].status == "ok"] == [0] * 11  # back at the same place: the same track
  d = ("detect", 1)
  assert det.calls == [
    *(d, ("track", 3)),  # chunk 0-3: keyframe 0 detected, 1-3 tracked in one refit along them
    *(d, ("track", 3), d, ("track", 2)),  # chunk 4-7: keyframe 4; 5 lost by ONet -> full detection; 6, 7 tracked
    *(d, d, d, d),  # chunk 8-11: keyframe 8 finds nothing; 9-11 each detected (nothing tracked)
    ("detect", 4),  # chunk 12-15 after an empty frame: all four detected in one batch
  ]


class _AllReady:
  """An iterator whose next items are always waiting (as a full :class:`megraph_jax.predict.pipeline.Prefetch`)."""

  def __init__(self, items):
    self.it = iter(items)

  def __iter__(self):
    return self

  def __next__(self):
    return next(self.it)

  def ready(self):
    return True


def test_model_stage_runs_one_batch_shape_and_live_mode_does_not_wait():
  """predict_rows pads every batch to the batch size; files wait for full batches, a live source does not."""
  from megraph_jax.predict import pipeline, records  # pylint: disable=import-outside-toplevel

  shapes = []

  def run(x):
    shapes.append(x.shape)
    return {"probs": np.tile(x[:, :1, 0, 0], (1, 3))}  # face i's probabilities are its input value

  def frames(waiting):
    for i in range(5):
      rows = [records.FacePrediction("cam", frame=i, face=0, is_video=True)]
      yield rows, np.full((1, 2, 2, 3), float(i), np.float32)
      assert len(shapes) == (i + 1 if waiting is False else 0 if i < 3 else 1), (i, shapes)

  class Source(_AllReady):
    def ready(self):
      return False  # a camera: the next frame is not there yet

  out = list(pipeline.predict_rows(Source(frames(False)), run, 4, live=True))
  assert [p.probs[0] for p in out] == [0, 1, 2, 3, 4] and set(shapes) == {(4, 2, 2, 3)}
  shapes.clear()
  out = list(pipeline.predict_rows(_AllReady(frames(True)), run, 4))
  assert [p.probs[0] for p in out] == [0, 1, 2, 3, 4] and shapes == [(4, 2, 2, 3)] * 2
