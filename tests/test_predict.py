"""Prediction on your own faces: CLI rows and pictures, the Predictor API, media reading, .pth backbones."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

try:  # torchvision segfaults when imported after TensorFlow (which MTCNN loads): import it first
  import torchvision  # noqa: F401
except ImportError:
  pass

from megraph_jax import loader
from megraph_jax.model_factory import ModelSpec, build
from megraph_jax.predict import media, records
from megraph_jax.predict import predictor as predict
from megraph_jax.weights.inspect import infer_backbone

BP4D = ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]
ASTRONAUT_FACE = (182, 64, 265, 172)  # x0, y0, x1, y1 of the face in skimage's astronaut (by eye)


@pytest.fixture(scope="module")
def stage2_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("stage2")
  spec = ModelSpec("resnet18", 12, 2, img_size=64, au_names=BP4D)
  return loader.save(build(spec), d, spec=spec)


@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("stage1")
  return loader.save(build(ModelSpec("resnet18", 8, 1, neighbor_num=3, img_size=64)), d)


def _astronaut() -> np.ndarray:
  return pytest.importorskip("skimage.data").astronaut()  # 512 x 512 RGB photograph


def _write_mp4(path, frames, fps=10.0):
  cv2 = pytest.importorskip("cv2")
  h, w = frames[0].shape[:2]
  out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
  for f in frames:
    out.write(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2BGR))
  out.release()
  assert os.path.getsize(path) > 0, f"{path}: OpenCV wrote no mp4 (no FFmpeg mp4v encoder?)"


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _overlap(a, b):
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  return ix * iy / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy)


def test_cli_on_photo_corrupt_file_and_video(tmp_path, stage2_dir):
  """The issue's check: a real photograph, a corrupt file and a short video -> rows, an error, pictures."""
  pytest.importorskip("mtcnn")
  img = _astronaut()
  src = tmp_path / "inputs"
  src.mkdir()
  Image.fromarray(img).save(src / "astronaut.png")
  (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
  _write_mp4(src / "clip.mp4", [img[40 + 4 * i : 296 + 4 * i, 100 + 2 * i : 356 + 2 * i] for i in range(5)])
  out, pics = tmp_path / "pred.csv", tmp_path / "pics"
  code = predict.main(
    [
      "--checkpoint",
      str(stage2_dir),
      str(src),
      "-o",
      str(out),
      "--plot",
      str(pics),
      "--plot-every",
      "1",
      "--smooth",
      "3",
      "--batch-size",
      "4",
      "--no-progress",
    ]
  )
  assert code == 0
  rows = _read_csv(out)
  got = [(os.path.basename(r["file"]), r["frame"], r["status"]) for r in rows]
  assert got == [("astronaut.png", "0", "ok"), ("broken.jpg", "0", "error")] + [
    ("clip.mp4", str(i), "ok") for i in range(5)
  ]
  assert "broken.jpg" in rows[1]["message"] and rows[1]["AU1_prob"] == ""
  box = [float(rows[0][k]) for k in ("x0", "y0", "x1", "y1")]
  assert _overlap(box, ASTRONAUT_FACE) > 0.6, box
  for r in rows[2:]:  # video frames: the face moved by (-2, -4) px per frame in the frame
    assert float(r["time"]) == pytest.approx(int(r["frame"]) / 10.0, abs=1e-3)
    assert r["face"] == "0"
  for r in (rows[0], *rows[2:]):
    for a in BP4D:
      p = float(r[f"{a}_prob"])
      assert 0.0 <= p <= 1.0 and int(r[f"{a}_occ"]) == int(p >= 0.5)
  names = sorted(os.listdir(pics))
  stems = ["astronaut_face0"] + [f"clip_f{i:06d}_face0" for i in range(5)]
  assert names == sorted([f"{s}_{kind}.png" for s in stems for kind in ("au", "graph")] + ["clip_timeline.png"])
  for n in names:
    with Image.open(pics / n) as im:
      assert im.format == "PNG" and min(im.size) > 300, (n, im.size)


def test_no_align_json_gif_missing_and_api_agree(tmp_path, stage1_dir):
  """--no-align on a crop, an animated GIF and a missing path; JSON rows; the API gives the same numbers."""
  rng = np.random.default_rng(0)
  crop = rng.integers(0, 256, (90, 80, 3), dtype=np.uint8)
  Image.fromarray(crop).save(tmp_path / "a.png")
  gif = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(3)]
  gif[0].save(tmp_path / "b.gif", save_all=True, append_images=gif[1:], duration=100, loop=0)
  (tmp_path / "notes.txt").write_text("not media: skipped in folders")
  out = tmp_path / "pred.json"
  code = predict.main(
    [
      "-c",
      str(stage1_dir),
      str(tmp_path),
      str(tmp_path / "missing.jpg"),
      "-o",
      str(out),
      "--no-align",
      "--no-progress",
      "--au-names",
      "A,B,C,D,E,F,G,H",
    ]
  )
  assert code == 0
  doc = json.loads(out.read_text())
  assert doc["au_names"] == list("ABCDEFGH")
  rows = doc["predictions"]
  got = [(os.path.basename(r["file"]), r["frame"], r["status"]) for r in rows]
  assert got == [
    ("a.png", 0, "ok"),
    ("b.gif", 0, "ok"),
    ("b.gif", 1, "ok"),
    ("b.gif", 2, "ok"),
    ("missing.jpg", 0, "error"),
  ]
  assert rows[0]["box"] == [0.0, 0.0, 80.0, 90.0] and rows[0]["score"] is None
  assert rows[2]["time"] == pytest.approx(0.1)
  api = predict.Predictor.from_checkpoint(stage1_dir, align=False)
  assert api.au_names == ["AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26"]  # DISFA's 8 for N = 8
  (p,) = api.predict_image(crop, name="a.png")
  np.testing.assert_allclose(p.probs, [rows[0]["probs"][a] for a in "ABCDEFGH"], atol=1e-4)
  assert p.adjacency.shape == (8, 8) and (p.adjacency.sum(1) >= 3).all()  # the FGG's K = 3 graph
  assert p.edge_strength is None


def test_batches_are_padded_and_match_single_faces(stage2_dir):
  pr = predict.Predictor.from_checkpoint(stage2_dir, align=False, batch_size=4)
  crops = list(np.random.default_rng(1).integers(0, 256, (5, 100, 100, 3), dtype=np.uint8))
  both = pr.predict_crops(crops)
  one = [pr.predict_crops([c]) for c in crops]
  for key in ("probs", "adjacency", "edge_strength"):
    np.testing.assert_allclose(both[key], np.concatenate([o[key] for o in one]), atol=1e-5)
  assert both["edge_strength"].shape == (5, 12, 12)


def test_smoothing_is_a_centred_moving_average_per_track():
  preds = [
    records.FacePrediction("v.mp4", frame=i, face=i % 2, is_video=True, probs=np.full(2, float(i))) for i in range(6)
  ]
  records.smooth(preds, 3)
  track0 = [p.probs[0] for p in preds if p.face == 0]  # frames 0, 2, 4
  np.testing.assert_allclose(track0, [1.0, 2.0, 3.0])  # mean(0,2), mean(0,2,4), mean(2,4)


def test_unreadable_video_and_missing_file_become_error_frames(tmp_path):
  (tmp_path / "empty.mp4").write_bytes(b"")
  (tmp_path / "junk.avi").write_bytes(b"RIFF0000AVI junk")
  frames = list(media.iter_media([tmp_path / "empty.mp4", tmp_path / "junk.avi", tmp_path / "nope.png"]))
  assert [f.image is None for f in frames] == [True, True, True]
  assert all(f.error and os.path.basename(f.file) in f.error for f in frames)


def test_infer_backbone_from_torchvision_and_swin_key_names():
  torch = pytest.importorskip("torch")
  tv = pytest.importorskip("torchvision")
  for name in ("resnet18", "resnet34", "resnet50", "resnet101"):
    with torch.device("meta"):
      keys = getattr(tv.models, name)().state_dict()
    assert infer_backbone({f"backbone.{k}": v for k, v in keys.items()}) == name
  for dim, depths, name in ((96, (2, 2, 6, 2), "swin_transformer_tiny"), (128, (2, 2, 18, 2), "swin_transformer_base")):
    t = {"backbone.patch_embed.proj.weight": np.zeros((dim, 3, 4, 4))}
    t.update({f"backbone.layers.{i}.blocks.{j}.norm1.weight": None for i, d in enumerate(depths) for j in range(d)})
    assert infer_backbone(t) == name
  with pytest.raises(ValueError, match="pass --backbone"):
    infer_backbone({"backbone.patch_embed.proj.weight": np.zeros((64, 3, 4, 4))}, source="x.pth")


def test_official_pth_backbone_is_inferred(tmp_path):
  pytest.importorskip("torchvision")
  from test_convert import _official_checkpoint  # pylint: disable=import-outside-toplevel

  path, _, _ = _official_checkpoint(tmp_path, 2)
  model, spec = loader.load(path, img_size=64)
  assert (model.backbone_name, model.num_aus, spec.au_names) == ("resnet18", 4, None)
  pr = predict.Predictor(model, align=False)
  assert pr.au_names == ["AU0", "AU1", "AU2", "AU3"] and pr.stage == 2


def test_errors_name_the_problem(tmp_path, stage2_dir):
  with pytest.raises(ValueError, match="3 AU names"):
    predict.Predictor.from_checkpoint(stage2_dir, au_names=["a", "b", "c"], align=False)
  with pytest.raises(FileNotFoundError, match="no such checkpoint"):
    loader.load(tmp_path / "nothing")
  with pytest.raises(ValueError, match="not a megraph-jax checkpoint"):
    loader.load(tmp_path)


def test_eval_transform_matches_the_tf_data_eval_pipeline(tmp_path):
  """Prediction's eval transform (PIL) equals evaluation's (tf.data create_eval_dataset) on the same files."""
  pytest.importorskip("tensorflow")
  try:
    from megraph_jax.data import input_pipeline as ip  # pylint: disable=import-outside-toplevel
    from megraph_jax.data.datasets import SplitData  # pylint: disable=import-outside-toplevel
  except ImportError:  # before the pipeline moved into the package
    from data_pipelines import input_pipeline as ip  # pylint: disable=import-outside-toplevel

    SplitData = ip.SplitData  # noqa: N806
  from megraph_jax.data.transforms import eval_transform  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  (tmp_path / "img").mkdir()
  sizes = [(300, 280), (256, 256), (200, 333), (257, 301)]  # (H, W): portrait, square, landscape, odd offsets
  images = []
  for i, (h, w) in enumerate(sizes):
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)  # smooth-ish: resampling is compared
    im = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC))
    Image.fromarray(im).save(tmp_path / "img" / f"{i}.png")
    images.append(im)
  n = len(sizes)
  data = SplitData(
    paths=tuple(f"{i}.png" for i in range(n)), labels=np.zeros((n, 2), np.int32), relations=np.zeros((n, 4), np.int32)
  )
  ds = ip.create_eval_dataset(data, root=str(tmp_path), batch_size=n, image_size=256, crop_size=224)
  (batch,) = list(ds.as_numpy_iterator())
  std = np.array([0.229, 0.224, 0.225], np.float32)
  for i, im in enumerate(images):
    ours = eval_transform(im, 224)
    assert ours.shape == batch["image"][i].shape == (224, 224, 3)
    diff = np.abs(ours - batch["image"][i]) * std * 255  # in 0..255 grey levels; PIL rounds its resize to uint8
    assert diff.mean() < 0.5 and diff.max() < 1.5, (sizes[i], diff.mean(), diff.max())  # measured 0.30, 1.0


# ----------------------------------------------------------------------------- the -o file of a failed run


def _previous_results(path) -> str:
  text = "".join(f"earlier,row,{i}\n" for i in range(301))
  path.write_text(text)
  return text


def test_a_failed_predict_leaves_the_output_file_alone(tmp_path, stage1_dir, capsys):
  """A wrong checkpoint, a source that cannot be opened, inputs without images: the earlier -o file stays whole."""
  out = tmp_path / "prev.csv"
  before = _previous_results(out)
  (tmp_path / "empty").mkdir()
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "photo.png")
  common = ["-o", str(out), "--no-align", "--no-progress"]
  runs = [
    (["-c", str(tmp_path / "WRONG.pth"), str(tmp_path / "photo.png")], "WRONG.pth: no such checkpoint"),
    (["-c", str(stage1_dir), "--camera", str(tmp_path / "no_such_stream.mp4")], "cannot open this capture source"),
    (["-c", str(stage1_dir), str(tmp_path / "empty")], "no image or video found in " + str(tmp_path / "empty")),
  ]
  for argv, message in runs:
    assert predict.main(argv + common) == 2, argv
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("predict: error: ") and message in lines[0], err
    assert "rows" not in err, err
    assert out.read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["empty", "photo.png", "prev.csv"]  # no partial file of an empty run


def test_a_crash_mid_run_keeps_the_rows_so_far_beside_the_output(tmp_path, stage1_dir, monkeypatch, capsys):
  """Rows are on disk as they are produced (a temporary file beside -o); a run that fails after writing some keeps
  them as <output>.partial and says so; the earlier file of that name stays as it was."""
  out = tmp_path / "prev.csv"
  before = _previous_results(out)
  (tmp_path / "in").mkdir()
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "in" / "a.png")
  on_disk = []

  def crashing(self, inputs, **kw):  # two rows, then an error the run does not expect
    for i in range(2):
      yield records.FacePrediction(f"a{i}.png", face=0, probs=np.full(self.num_aus, 0.25, np.float32))
    partial = [n for n in os.listdir(tmp_path) if n.endswith(".partial")]
    on_disk.append((partial, (tmp_path / partial[0]).read_text().count("\n")))
    raise error

  monkeypatch.setattr(predict.Predictor, "iter_predict", crashing)
  argv = ["-c", str(stage1_dir), str(tmp_path / "in"), "-o", str(out), "--no-align", "--no-progress"]
  error = RuntimeError("a bug mid-run")
  with pytest.raises(RuntimeError, match="a bug mid-run"):
    predict.main(argv)
  assert on_disk == [([f".prev.csv.{os.getpid()}.partial"], 3)]  # streamed: header + 2 rows before the crash
  assert out.read_text() == before
  rows = _read_csv(str(out) + ".partial")
  assert [(r["file"], r["status"], r["AU1_prob"]) for r in rows] == [("a0.png", "ok", "0.25"), ("a1.png", "ok", "0.25")]
  assert f"{out} left as it was; the 2 rows written are in {out}.partial" in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path)) == ["in", "prev.csv", "prev.csv.partial"]
  error = KeyboardInterrupt()  # Ctrl-C on files: exit status 130, the same partial file
  assert predict.main(argv) == 130
  assert out.read_text() == before and len(_read_csv(str(out) + ".partial")) == 2
  assert "interrupted" in capsys.readouterr().err


def test_a_successful_predict_replaces_the_output_file(tmp_path, stage1_dir):
  out = tmp_path / "prev.csv"
  _previous_results(out)
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
  assert (
    predict.main(["-c", str(stage1_dir), str(tmp_path / "a.png"), "-o", str(out), "--no-align", "--no-progress"]) == 0
  )
  assert [(os.path.basename(r["file"]), r["status"]) for r in _read_csv(out)] == [("a.png", "ok")]
  assert sorted(os.listdir(tmp_path)) == ["a.png", "prev.csv"]
