"""Face alignment: Umeyama and the warp against scikit-image, MTCNN on a real photograph, the CLI's report."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from data_pipelines import align
from megraph_jax.predict import faces

skimage = pytest.importorskip("skimage")
from skimage import data as skdata  # noqa: E402
from skimage import transform as sktf  # noqa: E402

SIZE = 224


@pytest.fixture(scope="module")
def astronaut():
  return skdata.astronaut()  # 512 x 512 RGB photograph of Eileen Collins.


@pytest.fixture(scope="module")
def detector():
  pytest.importorskip("mtcnn")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return align.Detector()


def test_umeyama_matches_skimage():
  rng = np.random.default_rng(0)
  src = rng.uniform(0, 100, (5, 2))
  ang, s, t = 0.3, 1.7, np.array([12.0, -5.0])
  rot = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
  dst = src @ rot.T + t + rng.normal(0, 2.0, (5, 2))
  if hasattr(sktf.SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26.
    ref = sktf.SimilarityTransform.from_estimate(src, dst)
  else:
    ref = sktf.SimilarityTransform()
    ref.estimate(src, dst)
  np.testing.assert_allclose(faces.umeyama(src, dst), ref.params[:2], atol=1e-9)
  # An exact similarity is recovered whatever the weights.
  exact = src @ rot.T + t
  np.testing.assert_allclose(faces.umeyama(src, exact, faces.WEIGHTS)[:, :2], rot, atol=1e-9)
  with pytest.raises(faces.AlignError, match="coincide"):
    faces.umeyama(np.ones((5, 2)), dst)


def test_warp_matches_skimage(astronaut):
  m = np.array([[0.55, -0.12, -60.0], [0.12, 0.55, 20.0]])  # Continuous pixels: centre of pixel i = i + 0.5.
  ours = faces.warp(astronaut, m, 160).astype(np.float64)
  # scikit-image puts pixel centres at integers: x_idx' = A x_idx + t + A 0.5 - 0.5.
  m_idx = np.vstack([m, [0, 0, 1]])
  m_idx[:2, 2] += m[:, :2] @ [0.5, 0.5] - 0.5
  ref = sktf.warp(
    astronaut, sktf.AffineTransform(matrix=m_idx).inverse, output_shape=(160, 160), order=3, preserve_range=True
  )
  inner = (slice(20, 140), slice(20, 140))
  err = np.abs(ours[inner] - ref[inner]).mean()
  shifted = np.abs(ours[inner] - np.roll(ref, 1, axis=1)[inner]).mean()
  print(f"warp vs scikit-image: {err:.2f} grey levels (1 px shifted reference: {shifted:.2f})")
  assert err < 2.0 and err < shifted / 2, (err, shifted)


def test_astronaut_eyes_land_on_template(astronaut, detector):
  found = detector(astronaut)
  assert len(found) == 1 and found[0].score > 0.9
  lm = found[0].landmarks
  tpl = faces.template(SIZE)
  m = faces.umeyama(lm, tpl, faces.WEIGHTS)
  eye_err = np.linalg.norm(faces.apply(m, lm)[:2] - tpl[:2], axis=1)
  print("eye-centre error at 224 px (fit):", eye_err.round(2))
  assert np.all(eye_err < 3.0), eye_err
  # End to end: the aligned crop, detected again, has its eyes on the template too (detector noise ~2 px).
  crop = align.align_face(astronaut, lm, SIZE)
  again = detector(crop)
  assert len(again) == 1
  redetect = np.linalg.norm(again[0].landmarks[:2] - tpl[:2], axis=1)
  print("eye-centre error at 224 px (re-detected):", redetect.round(2))
  assert np.all(redetect < 4.0), redetect


def _write_inputs(root, astronaut):
  face = astronaut[30:230, 110:330]  # The face with a margin.
  os.makedirs(root / "clip" / "empty", exist_ok=True)
  Image.fromarray(face).save(root / "clip" / "0.jpg")
  Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(root / "clip" / "1.png")  # No face: borrowed.
  Image.fromarray(face).convert("L").save(root / "clip" / "2.png")  # Grayscale.
  Image.fromarray(np.concatenate([face, face], axis=1)).save(root / "clip" / "3.jpg")  # Two faces.
  Image.fromarray(np.full((100, 100, 3), 90, np.uint8)).save(root / "clip" / "empty" / "0.png")  # Lone no-face.
  Image.fromarray(face[:10, :10]).save(root / "clip" / "4.png")  # Tiny.
  buf = (root / "clip" / "0.jpg").read_bytes()
  (root / "clip" / "5.jpg").write_bytes(buf[: len(buf) // 3])  # Truncated.
  (root / "clip" / "6.jpg").write_bytes(b"not an image")  # Corrupt.


def test_cli_folder_report(tmp_path, astronaut):
  pytest.importorskip("mtcnn")
  _write_inputs(tmp_path / "in", astronaut)
  out = tmp_path / "out"
  rc = align.main([str(tmp_path / "in"), str(out), "--size", "64", "--workers", "2", "--no-progress"])
  assert rc == 0
  report = json.loads((out / "align_report.json").read_text())
  counts = report["counts"]
  assert counts == {
    "corrupt_image": 2,
    "grayscale_image": 1,
    "multiple_faces": 1,
    "no_face": 1,
    "no_face_filled": 1,
    "tiny_image": 1,
  }, counts
  assert [k for k, _ in report["items"]["no_face"]] == [os.path.join("clip", "empty", "0.png")]
  written = sorted(str(p.relative_to(out)) for p in out.rglob("*.*") if p.name != "align_report.json")
  assert written == [os.path.join("clip", n) for n in ("0.jpg", "1.png", "2.png", "3.jpg")]
  assert Image.open(out / "clip" / "0.jpg").size == (64, 64)
  assert report["written"] == 4


def test_video_frames_aligned(tmp_path, astronaut):
  cv2 = pytest.importorskip("cv2")
  pytest.importorskip("mtcnn")
  face = np.ascontiguousarray(astronaut[30:230, 110:330])
  path = str(tmp_path / "clip.avi")
  w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25, (face.shape[1], face.shape[0]))
  for i in range(4):
    w.write(np.zeros_like(face) if i == 0 else np.roll(face, 3 * i, axis=1)[:, :, ::-1])
  w.release()
  log = align.align_path(path, str(tmp_path / "out"), align.AlignConfig(size=64, workers=1), progress=False)
  assert sorted(os.listdir(tmp_path / "out")) == ["0.png", "1.png", "2.png", "3.png", "align_report.json"]
  assert log.counts() == {"no_face_filled": 1}  # Frame 0 borrows frame 1's landmarks.


def test_bad_arguments(tmp_path):
  with pytest.raises(align.AlignError, match="aligner"):
    align.AlignConfig(aligner="dlib")
  assert align.main([str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
  (tmp_path / "x.txt").write_text("hi")
  assert align.main([str(tmp_path / "x.txt"), str(tmp_path / "out")]) == 2


class _FakeDetector:
  """Finds one face (fixed landmarks) in bright frames only."""

  def __init__(self, *args):
    del args

  def __call__(self, image):
    if image.mean() < 100:
      return []
    lm = np.array([[30.0, 40.0], [70.0, 40.0], [50.0, 60.0], [35.0, 80.0], [65.0, 80.0]])
    return [faces.Face(box=np.array([10.0, 10.0, 90.0, 90.0]), score=1.0, landmarks=lm)]


@pytest.mark.parametrize(
  "policy,want",
  [
    ("previous", ["no_face_filled", "no_face_filled", "corrupt_image", "", "no_face_filled", "no_face"]),
    ("skip", ["no_face", "no_face", "corrupt_image", "", "no_face", "no_face"]),
  ],
)
def test_missing_face_policy_keeps_order(tmp_path, monkeypatch, policy, want):
  monkeypatch.setattr(align, "Detector", _FakeDetector)
  monkeypatch.setattr(align, "_WORKER", {})
  dark, bright = np.full((100, 100, 3), 20, np.uint8), np.full((100, 100, 3), 200, np.uint8)
  (tmp_path / "bad.jpg").write_bytes(b"junk")
  frames = [
    align.Frame("a0", "a", array=dark),
    align.Frame("a1", "a", array=dark),
    align.Frame("a2", "a", path=str(tmp_path / "bad.jpg")),
    align.Frame("a3", "a", array=bright),
    align.Frame("a4", "a", array=dark),
    align.Frame("b0", "b", array=dark),
  ]
  log = align.IssueLog()
  out = list(align.align_frames(frames, align.AlignConfig(size=32, workers=1, missing_face=policy), log))
  assert [r.frame.key for r in out] == ["a0", "a1", "a2", "a3", "a4", "b0"]
  assert [",".join(r.issues) for r in out] == want
  assert [r.image is not None for r in out] == [k in ("", "no_face_filled") for k in want]
  assert sum(log.counts().values()) == sum(1 for k in want if k)
