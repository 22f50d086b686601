"""Prediction with OpenGraphAU checkpoints: the whole-image transform against torchvision, the CLI against the
official demo path (tools/make_opengraphau_golden.py ``demo/*``), column names and legend, pictures, a video."""

import csv
import json
import os

import numpy as np
import pytest
from helpers import official_tensors, seeded_photo, write_official_pth
from PIL import Image
from torchvision import transforms as T

from megraph_jax.data import synthetic_video
from megraph_jax.data.transforms import eval_transform
from megraph_jax.predict import media, plots
from megraph_jax.predict import predictor as predict
from megraph_jax.task import IMAGENET_MEAN, IMAGENET_STD, OPENGRAPHAU_AUS, au_legend

pytestmark = pytest.mark.precision("highest")  # parity with the official model / references to ~1e-7
ATOL = 1e-6  # the whole-image scores against the official demo's: 1.2e-7 measured (x86 CPU)

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden_opengraphau.npz")


@pytest.fixture(scope="module")
def golden():
  with np.load(GOLDEN) as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def photos(golden, tmp_path_factory):
  """The tool's PNG photos of odd sizes and aspect ratios (portrait, landscape, square, smaller than 224)."""
  d = tmp_path_factory.mktemp("photos")
  for i, (h, w) in enumerate(golden["photos"]):
    Image.fromarray(seeded_photo(i, int(h), int(w))).save(d / f"photo{i}.png")
  return d


def _pth(golden, name, seed, path):
  write_official_pth(official_tensors(golden, f"demo/{name}", seed), path)
  return str(path)


@pytest.mark.parametrize("size", [(300, 200), (181, 257), (97, 143), (480, 641), (256, 256), (224, 1000)])
def test_whole_image_transform_is_torchvisions(size):
  """Resize(256) on the shorter side (PIL bilinear, antialiased) -> CenterCrop(224) -> ToTensor -> Normalize."""
  rgb = seeded_photo(sum(size), *size)
  official = T.Compose(
    [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN.tolist(), IMAGENET_STD.tolist())]
  )
  want = official(Image.fromarray(rgb)).numpy().transpose(1, 2, 0)
  got = eval_transform(rgb, 224)
  assert got.shape == (224, 224, 3) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,seed", [("og_r18_s2", 9), ("og_r18_s1", 10)])
def test_cli_no_align_is_the_official_demo(golden, photos, tmp_path, name, seed):
  """``--no-align`` on photos of several sizes gives the official demo's 41 scores (to the printed 4 decimals)."""
  ckpt = _pth(golden, name, seed, tmp_path / "OpenGprahAU-ResNet18_second_stage.pth")
  out = tmp_path / "pred.json"
  assert predict.main(["-c", ckpt, str(photos), "--no-align", "--no-progress", "-o", str(out)]) == 0
  doc = json.loads(out.read_text())
  assert doc["au_names"] == list(OPENGRAPHAU_AUS)
  assert doc["legend"] == au_legend(OPENGRAPHAU_AUS)
  assert doc["legend"]["AUL1"] == "Left inner brow raiser" and "ambiguous" in doc["legend"]["AUR12"]
  rows = sorted(doc["predictions"], key=lambda r: r["file"])
  got = np.array([[r["probs"][a] for a in OPENGRAPHAU_AUS] for r in rows])
  want = golden[f"demo/{name}/out"]
  assert got.shape == want.shape == (5, 41)
  np.testing.assert_allclose(got, want, atol=6e-5, rtol=0)  # rounded to 4 decimals
  api = predict.Predictor.from_checkpoint(ckpt, align=False)
  full = np.stack([api.predict(str(photos / f"photo{i}.png"))[0].probs for i in range(5)])
  err = np.abs(full - want).max()
  print(f"{name}: max |ours - official| = {err:.2e}")
  assert err < ATOL, f"{name}: max |ours - official| = {err:.2e}"


def _official_input(path):
  """The official demo's model input for a file: ``pil_loader`` (PIL ``convert('RGB')``) + ``image_eval``."""
  official = T.Compose(
    [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN.tolist(), IMAGENET_STD.tolist())]
  )
  with Image.open(path) as im:
    return official(im.convert("RGB")).numpy().transpose(1, 2, 0)


def test_no_align_reads_files_as_the_official_loader(golden, tmp_path):
  """Whole-image mode takes the stored pixels as the official ``pil_loader`` does: a JPEG with an EXIF rotation is
  not turned, an RGBA / LA / palette PNG loses its alpha instead of being composited; the scores equal the model on
  torchvision's transform of ``Image.open(path).convert('RGB')``."""
  rgb = seeded_photo(21, 300, 200)
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
  Image.fromarray(rgb).save(tmp_path / "a_rotated.jpg", exif=exif, quality=90)
  rgba = np.concatenate([seeded_photo(22, 181, 257), seeded_photo(23, 181, 257)[..., :1]], axis=-1)
  rgba[:60, :, 3] = 0  # a fully transparent band, whose hidden colours the official loader keeps
  Image.fromarray(rgba, "RGBA").save(tmp_path / "b_rgba.png")
  Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "c_la.png")
  Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "d_palette.png")
  Image.fromarray(rgb[..., 0]).save(tmp_path / "e_gray.jpg")
  files = sorted(str(p) for p in tmp_path.iterdir())
  api = predict.Predictor.from_checkpoint(_pth(golden, "og_r18_s1", 10, tmp_path / "og.pth"), align=False)
  files = [f for f in files if not f.endswith(".pth")]
  x = np.stack([_official_input(f) for f in files])
  pad = np.zeros((api.batch_size - len(x), *x.shape[1:]), np.float32)
  want = api.run_batch(np.concatenate([x, pad]))["probs"][: len(x)]
  rows = api.predict(files)
  assert [r.file for r in rows] == files and all(r.status == "ok" for r in rows)
  got = np.stack([r.probs for r in rows])
  err = np.abs(got - want).max()
  print(f"rows: max |ours - model on the official input| = {err:.2e}")
  assert err < ATOL, f"rows {err:.2e} off the model on the official loader's input"
  # face mode does turn the photo upright: its whole-image pixels would differ
  assert media.read_image(files[0]).shape == (200, 300, 3) and media.read_image(files[0], plain=True).shape == (
    300,
    200,
    3,
  )


def test_megraph_cli_no_align_is_the_official_test_transform(golden, photos, tmp_path):
  """The same for an ME-GraphAU (BP4D, 12 AUs) stage-2 checkpoint."""
  ckpt = _pth(golden, "mg_r18_s2", 11, tmp_path / "MEFARG_resnet18_BP4D_fold1.pth")
  api = predict.Predictor.from_checkpoint(ckpt, align=False)
  got = np.stack([api.predict(str(photos / f"photo{i}.png"))[0].probs for i in range(5)])
  err = np.abs(got - golden["demo/mg_r18_s2/out"]).max()
  print(f"mg_r18_s2: max |ours - official| = {err:.2e}")
  assert err < ATOL, f"mg_r18_s2: max |ours - official| = {err:.2e}"


def test_csv_columns_pictures_and_video(golden, tmp_path):
  """CSV columns named by AU code (left/right as AUL*/AUR*), the face and graph pictures, a video's rows."""
  cv2 = pytest.importorskip("cv2")
  ckpt = _pth(golden, "og_r18_s2", 9, tmp_path / "OpenGprahAU-ResNet18_second_stage.pth")
  src = tmp_path / "in"
  src.mkdir()
  Image.fromarray(seeded_photo(0, 120, 100)).save(src / "a.png")
  frames = [seeded_photo(i, 96, 128) for i in range(3)]
  video = cv2.VideoWriter(str(src / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (128, 96))
  for f in frames:
    video.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
  video.release()
  out, pics = tmp_path / "pred.csv", tmp_path / "pics"
  args = ["-c", ckpt, str(src), "--no-align", "--no-progress", "-o", str(out), "--plot", str(pics), "--plot-every", "1"]
  assert predict.main(args) == 0
  with open(out) as f:
    reader = csv.DictReader(f)
    rows = list(reader)
  assert [c for c in reader.fieldnames if c.endswith("_prob")] == [f"{a}_prob" for a in OPENGRAPHAU_AUS]
  assert "AUL12_prob" in reader.fieldnames and "AUR14_occ" in reader.fieldnames
  assert [(os.path.basename(r["file"]), r["status"]) for r in rows] == [("a.png", "ok")] + [("clip.mp4", "ok")] * 3
  names = sorted(os.listdir(pics))
  assert "a_face0_au.png" in names and "a_face0_graph.png" in names and "clip_timeline.png" in names


def test_default_mtcnn_faces_of_a_video(golden, tmp_path):
  """The released-file command as documented (MTCNN crops by default) on a video with two faces: 41 columns."""
  ckpt = _pth(golden, "og_r18_s2", 9, tmp_path / "OpenGprahAU-ResNet18_second_stage.pth")
  video = synthetic_video.write(tmp_path / "two_faces.mp4", 4, faces=2, seed=2)  # seed 2: MTCNN finds both
  out = tmp_path / "pred.json"
  assert predict.main(["-c", ckpt, str(video), "--no-progress", "-o", str(out)]) == 0
  with open(out) as f:
    doc = json.load(f)
  rows = doc["predictions"] if isinstance(doc, dict) else doc
  ok = [r for r in rows if r["status"] == "ok"]
  assert len(ok) == 8 and sorted({r["face"] for r in ok}) == [0, 1]
  assert list(ok[0]["probs"]) == list(OPENGRAPHAU_AUS)


def test_pictures_of_41_scores_and_the_27_node_graph():
  rng = np.random.default_rng(0)
  probs = rng.uniform(0, 1, 41).astype(np.float32)
  fig = plots.plot_face(seeded_photo(0, 64, 64), probs, OPENGRAPHAU_AUS, threshold=0.5)
  main_ax, side_ax = fig.axes[1], fig.axes[2]
  assert len(main_ax.patches) == 27 and len(side_ax.patches) == 14
  labels = [t.get_text() for t in side_ax.get_yticklabels()]
  assert labels[0] == "AUL1 | AUR1\nInner brow raiser" and "AU11 node" in labels[5]
  red = [p for p in main_ax.patches if p.get_facecolor()[:3] == plots.matplotlib.colors.to_rgb(plots.ACTIVE)]
  assert len(red) == int((probs[:27] >= 0.5).sum())
  adj = (rng.uniform(0, 1, (27, 27)) > 0.8).astype(np.float32)
  gates = rng.uniform(0.5, 1.5, (27, 27)).astype(np.float32)
  fig = plots.plot_graph(probs, OPENGRAPHAU_AUS, adj, edge_strength=gates, edge_title=plots.GATE_TITLE, k=4)
  texts = [t.get_text() for t in fig.axes[0].texts]
  assert "AU39" in texts and "AUL1" not in texts  # 27 nodes: the main AUs
  (edges,) = [ax for ax in fig.axes if ax.images]
  assert edges.images[0].get_array().shape == (27, 27) and "gate" in edges.get_title()
