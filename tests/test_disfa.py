"""DISFA builder on miniature raw trees (left-camera videos or frame folders, per-AU intensity files)."""

import json
import os
import subprocess

import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import official_subjects
from PIL import Image, ImageDraw
from tfds_cli import build_command  # tests/tfds_cli.py

from data_pipelines import align, disfa, export
from data_pipelines import build as common
from megraph_jax.data import datasets

cv2 = pytest.importorskip("cv2")

N = 4  # Labelled frames per subject.
MINI = ("SN002", "SN013", "SN003")  # One official subject per group: groups 1, 2, 3 = fold3/2/1 test.
# First path components of the official data/DISFA/list/DISFA_*_img_path_fold*.txt (ME-GraphAU), in order.
OFFICIAL = {
  "train_fold1": "SN002 SN010 SN001 SN026 SN027 SN032 SN030 SN009 SN016 SN013 SN018 SN011 SN028 SN012 SN006 SN031 "
  "SN021 SN024",
  "train_fold2": "SN002 SN010 SN001 SN026 SN027 SN032 SN030 SN009 SN016 SN003 SN029 SN023 SN025 SN008 SN005 SN007 "
  "SN017 SN004",
  "train_fold3": "SN013 SN018 SN011 SN028 SN012 SN006 SN031 SN021 SN024 SN003 SN029 SN023 SN025 SN008 SN005 SN007 "
  "SN017 SN004",
  "test_fold1": "SN003 SN029 SN023 SN025 SN008 SN005 SN007 SN017 SN004",
  "test_fold2": "SN013 SN018 SN011 SN028 SN012 SN006 SN031 SN021 SN024",
  "test_fold3": "SN002 SN010 SN001 SN026 SN027 SN032 SN030 SN009 SN016",
}


def _intensity(subj, au_index, i):
  """Deterministic intensity 0..5 of frame ``i`` (0-based)."""
  return (i + au_index + int(subj[2:])) % 6


def _frame(subj, i, size=64):
  img = Image.new("RGB", (size, size), (40 + 50 * (i % 4), 90, 140))
  ImageDraw.Draw(img).ellipse((10, 6, 54, 60), fill=(220, 180, 150))
  return np.asarray(img)


def write_labels(root, subj, n=N, aus=disfa.AUS):
  d = os.path.join(root, "ActionUnit_Labels", subj)
  os.makedirs(d, exist_ok=True)
  for j, au in enumerate(disfa.AUS):
    if au in aus:
      with open(os.path.join(d, f"{subj}_au{au}.txt"), "w") as f:
        f.write("".join(f"{i + 1},{_intensity(subj, j, i)}\n" for i in range(n)))


def write_video(root, subj, n=N):
  d = os.path.join(root, "Videos_LeftCamera")
  os.makedirs(d, exist_ok=True)
  w = cv2.VideoWriter(os.path.join(d, f"LeftVideo{subj}_comp.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 20, (64, 64))
  for i in range(n):
    w.write(_frame(subj, i)[:, :, ::-1])
  w.release()


def write_frames(root, subj, n=N, base=0):
  d = os.path.join(root, "img", subj)
  os.makedirs(d, exist_ok=True)
  for i in range(n):
    Image.fromarray(_frame(subj, i)).save(os.path.join(d, f"{i + base}.png"))


def _want(subj, i):
  return np.array([int(_intensity(subj, j, i) >= 2) for j in range(len(disfa.AUS))], np.int32)


def _examples(builder, split):
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def _build(root, data_dir, **cfg):
  builder = disfa.Disfa(
    data_dir=str(data_dir), config=common.RawConfig(**{"name": "t", "aligner": "none", "image_size": 32, **cfg})
  )
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  return builder


def _plan(root, **cfg):
  return disfa.plan(str(root), common.RawConfig(**{"name": "t", **cfg}), align.IssueLog(disfa.ISSUES))


def test_official_subject_sets():
  for k in (1, 2, 3):
    for split in ("train", "test"):
      got = [s for p in common.fold_parts(k, split) for s in disfa.PARTS[p]]
      assert got == OFFICIAL[f"{split}_fold{k}"].split(), (k, split)
  # The official list files' subjects (shipped in tests/data/official_subjects.json; checked against an ME-GraphAU
  # checkout too where MEGRAPHAU_OFFICIAL names one).
  official = official_subjects("DISFA")
  assert official.keys() == OFFICIAL.keys()
  for key, subjects in OFFICIAL.items():
    assert official[key] == subjects.split(), key
  common.check_parts(disfa.PARTS, "official")


@pytest.fixture(scope="module", params=["module", "tfds"])
def cli_build(request, tmp_path_factory):
  """`python -m data_pipelines.build` and, where installed, `tfds build` itself, on a video tree with the skippable
  bad input of DISFA."""
  cmd = build_command(request.param, "disfa")  # skips the tfds variant where it is not installed
  root = tmp_path_factory.mktemp("disfa_raw")
  for s in MINI:
    write_labels(root, s, aus=[a for a in disfa.AUS if not (s == "SN013" and a == 9)])  # SN013 lacks AU9.
  write_video(root, "SN002", N + 1)  # One frame beyond the labels.
  write_video(root, "SN013")
  write_video(root, "SN003", N - 1)  # Ends one frame early.
  write_labels(root, "SN099")  # In no official fold.
  au2 = root / "ActionUnit_Labels" / "SN002" / "SN002_au2.txt"
  lines = au2.read_text().splitlines()
  lines[2] = "7," + lines[2].split(",")[1]  # Frame number off: the line position counts, as officially.
  au2.write_text("\n".join(lines) + "\n")
  data_dir = tmp_path_factory.mktemp("tfds")
  config = json.dumps({"name": "mini", "aligner": "none", "image_size": 64, "image_format": "png"})
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
    [*cmd, f"--manual_dir={root}", f"--data_dir={data_dir}", f"--config={config}"],
    capture_output=True,
    text=True,
    env=env,
    cwd=repo,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  log = proc.stdout + proc.stderr  # the build log (tfds build logs to stdout)
  return tfds.builder_from_directory(str(data_dir / "disfa" / "mini" / "1.0.0")), log


def test_cli_build_examples_and_folds(cli_build):
  builder, _ = cli_build
  ex = {s: _examples(builder, s) for s in ("fold1_test", "fold2_test", "fold3_test")}
  assert [e["path"].decode() for e in ex["fold3_test"]] == [f"SN002/{i}.png" for i in range(N)]
  assert [e["path"].decode() for e in ex["fold2_test"]] == [f"SN013/{i}.png" for i in range(N)]
  assert [e["path"].decode() for e in ex["fold1_test"]] == [f"SN003/{i}.png" for i in range(N - 1)]
  for split in ex:
    for e in ex[split]:
      subj, i = e["subject"].decode(), int(e["frame"])
      want = _want(subj, i)
      if subj == "SN013":
        want[disfa.AUS.index(9)] = 0  # Missing AU file: zeros, as the official tool.
      np.testing.assert_array_equal(e["label"], want)
      assert e["task"].decode() == f"LeftVideo{subj}_comp"
      assert e["image"].shape == (64, 64, 3)
      assert abs(float(e["image"][2, 2, 0]) - _frame(subj, i)[0, 0, 0]) < 12  # The right video frame.
  train2 = _examples(builder, common.tfds_split(2, "train"))
  assert [e["subject"].decode() for e in train2] == ["SN002"] * N + ["SN003"] * (N - 1)


def test_cli_build_counts_bad_input(cli_build):
  builder, log = cli_build
  meta = builder.info.metadata
  assert meta["bad_input"]["counts"] == {
    "extra_video_frames": 1,
    "label_frame_number": 1,
    "missing_au_file": 1,
    "missing_frame": 1,
    "missing_subject": 24,
    "unknown_subject": 1,
  }
  items = meta["bad_input"]["items"]
  assert items["missing_frame"][0][0] == "SN003/3.png"
  assert items["missing_au_file"][0][0] == "SN013/AU9"
  assert "SN002_au2.txt line 3 says frame 7" in items["label_frame_number"][0][1]
  assert meta["frame_source"] == "video" and meta["threshold"] == 2
  assert "missing_frame: 1" in log and "missing_au_file: 1" in log


def test_export_round_trip(cli_build, tmp_path):
  builder, _ = cli_build
  sizes = export.export_official(builder, str(tmp_path))
  assert sizes["fold1_train"] == 2 * N and sizes["fold1_test"] == N - 1
  for k in (1, 2, 3):
    for split in ("train", "test"):
      data = datasets.read_split(str(tmp_path), "DISFA", k, split)
      want = [e for e in _examples(builder, common.tfds_split(k, split))]
      assert list(data.paths) == [e["path"].decode() for e in want]
      np.testing.assert_array_equal(data.labels, np.stack([e["label"] for e in want]))
  png = np.asarray(Image.open(tmp_path / "img" / "SN013" / "1.png"))
  np.testing.assert_array_equal(png, _examples(builder, "fold2_test")[1]["image"])  # Lossless.


def test_frame_folders_with_bad_frames(tmp_path):
  for s in MINI:
    write_labels(tmp_path, s)
  write_frames(tmp_path, "SN002")
  write_frames(tmp_path, "SN013", base=1)  # Numbered from 1: detected.
  write_frames(tmp_path, "SN003")
  d = tmp_path / "img" / "SN003"
  os.remove(d / "0.png")  # Missing.
  (d / "1.png").write_bytes((d / "1.png").read_bytes()[:60])  # Truncated.
  Image.fromarray(_frame("SN003", 2)).convert("L").save(d / "2.png")  # Grayscale: converted.
  Image.fromarray(_frame("SN002", 3)[:8, :8]).save(tmp_path / "img" / "SN002" / "3.png")  # Tiny.
  builder = _build(tmp_path, tmp_path / "tfds")
  meta = builder.info.metadata
  assert meta["frame_source"] == "frames" and meta["one_based_frame_folders"] == ["SN013"]
  assert meta["bad_input"]["counts"] == {
    "corrupt_image": 1,
    "grayscale_image": 1,
    "missing_frame": 1,
    "missing_subject": 24,
    "tiny_image": 1,
  }
  assert [int(e["frame"]) for e in _examples(builder, "fold1_test")] == [2, 3]
  assert [int(e["frame"]) for e in _examples(builder, "fold3_test")] == [0, 1, 2]
  sn013 = _examples(builder, "fold2_test")
  assert [int(e["frame"]) for e in sn013] == [0, 1, 2, 3]
  assert abs(float(sn013[1]["image"][1, 1, 0]) - _frame("SN013", 1)[0, 0, 0]) < 3  # File 2.png is frame 1.


@pytest.mark.parametrize(
  "text,match",
  [
    ("1,0\n2,1,3\n", r"SN013_au4.txt line 2: expected 2 comma-separated columns"),
    ("1,0\n2,7\n", r"SN013_au4.txt line 2: unknown intensity 7"),
    ("1,0\n2,x\n", r"SN013_au4.txt line 2: non-integer value"),
    ("1,0\n\n3,1\n4,0\n", r"SN013_au4.txt line 2: expected 2 comma-separated columns"),
    ("1,0\n2,1\n", r"SN013_au4.txt has 2 frames but SN013_au1.txt has 4"),
  ],
)
def test_bad_label_file(tmp_path, text, match):
  for s in MINI:
    write_labels(tmp_path, s)
    write_frames(tmp_path, s)
  (tmp_path / "ActionUnit_Labels" / "SN013" / "SN013_au4.txt").write_text(text)
  with pytest.raises(common.RawDataError, match=match):
    _plan(tmp_path)


def test_subject_in_two_folds_and_empty(tmp_path):
  for s in MINI:
    write_labels(tmp_path, s)
    write_frames(tmp_path, s)
  with pytest.raises(common.RawDataError, match="subject SN002 is in groups 1 and 3"):
    _plan(tmp_path, parts=[["SN002"], ["SN013"], ["SN003", "SN002"]])
  with pytest.raises(common.RawDataError, match=r"no labelled frames for subject group 2 \(fold2_test: SN010\)"):
    _plan(tmp_path, parts=[["SN002"], ["SN010"], ["SN003"]])
  os.remove(tmp_path / "ActionUnit_Labels" / "SN003" / "SN003_au1.txt")
  with pytest.raises(common.RawDataError, match=r"SN003_au1.txt does not exist"):
    _plan(tmp_path)


def test_corrupt_video_and_manual_dir(tmp_path):
  for s in MINI:
    write_labels(tmp_path, s)
    write_video(tmp_path, s)
  (tmp_path / "Videos_LeftCamera" / "LeftVideoSN013_comp.avi").write_bytes(b"RIFF broken")
  with pytest.raises(align.AlignError, match=r"LeftVideoSN013_comp.avi: cannot open as a video"):
    _build(tmp_path, tmp_path / "tfds")
  with pytest.raises(AssertionError, match=r"does not exist or is empty[\s\S]*ActionUnit_Labels/SN001"):
    _build(tmp_path / "missing", tmp_path / "tfds2")
  (tmp_path / "labels_only").mkdir()
  os.rename(tmp_path / "ActionUnit_Labels", tmp_path / "labels_only" / "ActionUnit_Labels")
  with pytest.raises(common.ManualDirError, match=r"no folder with left-camera videos[\s\S]*Nor: no folder with frame"):
    _plan(tmp_path / "labels_only")
