"""BP4D builder on miniature raw trees in the release format: folds, labels, bad input, export, alignment."""

import json
import os
import subprocess
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import official_subjects
from PIL import Image, ImageDraw
from tfds_cli import build_command  # tests/tfds_cli.py

from data_pipelines import bp4d, export
from data_pipelines import build as common
from megraph_jax.data import datasets
from megraph_jax.task import class_weights

HEADER = list(range(28))  # Column '0' holds the frame number; the others are AU numbers.
FRAMES = (10, 11, 12)
MINI = ("F001", "M011", "F007")  # One official subject per group: groups 1, 2, 3 = fold3/2/1 test.
# First path components of the official data/BP4D/list/BP4D_*_img_path_fold*.txt (ME-GraphAU), in order.
OFFICIAL = {
  "train_fold1": "F001 M007 F018 F008 F002 M004 F010 F009 M012 M001 F016 M014 F023 M008 M011 F003 M010 M002 F005 "
  "F022 M018 M017 F013 M016 F020 F011 M013 M005",
  "train_fold2": "F001 M007 F018 F008 F002 M004 F010 F009 M012 M001 F016 M014 F023 M008 F007 F015 F006 F019 M006 "
  "M009 F012 M003 F004 F021 F017 M015 F014",
  "train_fold3": "M011 F003 M010 M002 F005 F022 M018 M017 F013 M016 F020 F011 M013 M005 F007 F015 F006 F019 M006 "
  "M009 F012 M003 F004 F021 F017 M015 F014",
  "test_fold1": "F007 F015 F006 F019 M006 M009 F012 M003 F004 F021 F017 M015 F014",
  "test_fold2": "M011 F003 M010 M002 F005 F022 M018 M017 F013 M016 F020 F011 M013 M005",
  "test_fold3": "F001 M007 F018 F008 F002 M004 F010 F009 M012 M001 F016 M014 F023 M008",
}


def _label(subj, task, fr):
  """Deterministic 0/1 labels ``[12]`` with positives of every AU in every subject."""
  k = MINI.index(subj) if subj in MINI else 0
  return np.array([(fr + j + k + int(task[1:])) % 2 for j in range(len(bp4d.AUS))], np.int32)


def _face(seed, size=64):
  rng = np.random.default_rng(seed)
  img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
  ImageDraw.Draw(img).ellipse((size // 6, size // 10, 5 * size // 6, 9 * size // 10), fill=(224, 180, 150))
  return img


def _write_csv(path, rows, header=HEADER):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(",".join(map(str, header)) + "\n")
    for r in rows:
      f.write(",".join(map(str, r)) + "\n")


def _csv_row(fr, y, header=HEADER):
  row = [0] * len(header)
  row[0] = fr
  for au, v in zip(bp4d.AUS, y):
    row[header.index(au)] = int(v)
  return row


def make_tree(root, subjects=MINI, tasks=("T1", "T2"), frames=FRAMES, image=_face):
  """Writes ``root/2D+3D/<subj>/<task>/<0010>.jpg`` and ``root/AUCoding/AU_OCC/<subj>_<task>.csv``."""
  for subj in subjects:
    for task in tasks:
      d = os.path.join(root, "2D+3D", subj, task)
      os.makedirs(d, exist_ok=True)
      for fr in frames:
        image(zlib.crc32(f"{subj}/{task}/{fr}".encode()) % 997).save(os.path.join(d, f"{fr:04d}.jpg"), quality=90)
      _write_csv(
        os.path.join(root, "AUCoding", "AU_OCC", f"{subj}_{task}.csv"),
        [_csv_row(fr, _label(subj, task, fr)) for fr in frames],
      )
  return str(root)


def _examples(builder, split):
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def _build(root, data_dir, **cfg):
  builder = bp4d.Bp4d(
    data_dir=str(data_dir), config=common.RawConfig(**{"name": "t", "aligner": "none", "image_size": 32, **cfg})
  )
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  return builder


def test_official_subject_sets():
  for k in (1, 2, 3):
    for split in ("train", "test"):
      got = [s for p in common.fold_parts(k, split) for s in bp4d.PARTS[p]]
      assert got == OFFICIAL[f"{split}_fold{k}"].split(), (k, split)
  # The official list files' subjects (shipped in tests/data/official_subjects.json; checked against an ME-GraphAU
  # checkout too where MEGRAPHAU_OFFICIAL names one).
  official = official_subjects("BP4D")
  assert official.keys() == OFFICIAL.keys()
  for key, subjects in OFFICIAL.items():
    assert official[key] == subjects.split(), key
  common.check_parts(bp4d.PARTS, "official")


@pytest.fixture(scope="module", params=["module", "tfds"])
def cli_build(request, tmp_path_factory):
  """`python -m data_pipelines.build` and, where installed, `tfds build` itself, on a tree with every skippable bad
  input."""
  cmd = build_command(request.param, "bp4d")  # skips the tfds variant where it is not installed
  root = tmp_path_factory.mktemp("bp4d_raw")
  make_tree(root)
  make_tree(root, subjects=("F099",), tasks=("T1",))  # In no official fold.
  f001 = root / "AUCoding" / "AU_OCC" / "F001_T1.csv"
  _write_csv(str(f001), [_csv_row(fr, _label("F001", "T1", fr)) for fr in FRAMES + (13,)])  # 13.jpg is missing.
  bad = root / "2D+3D" / "F001" / "T2" / "0011.jpg"
  bad.write_bytes(bad.read_bytes()[:200])  # Truncated.
  _face(1).convert("L").save(root / "2D+3D" / "M011" / "T1" / "0010.jpg")  # Grayscale: converted.
  _face(2, size=16).save(root / "2D+3D" / "F007" / "T2" / "0012.jpg")  # Tiny: skipped.
  _face(3).save(root / "2D+3D" / "M011" / "T2" / "0099.jpg")  # Not in the CSV: counted, not used.
  y = _label("F007", "T1", 11)
  y[bp4d.AUS.index(15)] = 9
  rows = [_csv_row(fr, y if fr == 11 else _label("F007", "T1", fr)) for fr in FRAMES]
  _write_csv(str(root / "AUCoding" / "AU_OCC" / "F007_T1.csv"), rows)
  data_dir = tmp_path_factory.mktemp("tfds")
  config = json.dumps({"name": "mini", "aligner": "none", "image_size": 64})
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
  return tfds.builder_from_directory(str(data_dir / "bp4d" / "mini" / "1.0.0")), log


def test_cli_build_examples_and_folds(cli_build):
  builder, _ = cli_build
  paths = {s: [e["path"].decode() for e in _examples(builder, s)] for s in ("fold1_test", "fold2_test", "fold3_test")}
  assert paths["fold3_test"] == [
    "F001/T1/10.jpg",
    "F001/T1/11.jpg",
    "F001/T1/12.jpg",
    "F001/T2/10.jpg",
    "F001/T2/12.jpg",
  ]
  assert paths["fold2_test"] == [f"M011/{t}/{f}.jpg" for t in ("T1", "T2") for f in FRAMES]
  assert paths["fold1_test"] == [
    "F007/T1/10.jpg",
    "F007/T1/11.jpg",
    "F007/T1/12.jpg",
    "F007/T2/10.jpg",
    "F007/T2/11.jpg",
  ]
  train1 = _examples(builder, common.tfds_split(1, "train"))
  assert [e["path"].decode() for e in train1] == paths["fold3_test"] + paths["fold2_test"]  # Official order.
  for e in train1 + _examples(builder, "fold1_test"):
    subj, task, name = e["path"].decode().split("/")
    fr = int(name[:-4])
    want = _label(subj, task, fr)
    if e["path"] == b"F007/T1/11.jpg":
      want[bp4d.AUS.index(15)] = 9  # Kept as the official tool does.
    np.testing.assert_array_equal(e["label"], want)
    assert (e["subject"].decode(), e["task"].decode(), int(e["frame"])) == (subj, task, fr)
    assert e["image"].shape == (64, 64, 3)
  for k in (1, 2, 3):
    subjects = {e["subject"].decode() for e in _examples(builder, common.tfds_split(k, "test"))}
    assert subjects == {s for p in common.fold_parts(k, "test") for s in bp4d.PARTS[p]} & set(MINI)


def test_cli_build_counts_bad_input(cli_build):
  builder, log = cli_build
  meta = builder.info.metadata
  assert meta["bad_input"]["counts"] == {
    "corrupt_image": 1,
    "grayscale_image": 1,
    "missing_frame": 1,
    "tiny_image": 1,
    "unlabelled_kept": 1,
    "unknown_subject": 1,
    "missing_subject": 38,
    "missing_label_file": 18,
  }
  items = meta["bad_input"]["items"]
  assert items["missing_frame"][0][0] == "F001/T1/13.jpg" and "line 5" in items["missing_frame"][0][1]
  assert items["corrupt_image"][0][0] == "F001/T2/11.jpg"
  assert items["tiny_image"][0][0] == "F007/T2/12.jpg"
  assert items["unknown_subject"][0][0] == "F099"
  assert "AU15 = 9" in items["unlabelled_kept"][0][1]
  assert meta["frames_without_label"] == 1 and meta["unlabelled_frames"] == 1
  for line in ("missing_frame: 1", "corrupt_image: 1", "tiny_image: 1", "grayscale_image: 1"):
    assert line in log, line  # The build log names each kind.


def test_export_round_trip(cli_build, tmp_path):
  builder, _ = cli_build
  sizes = export.export_official(builder, str(tmp_path), unlabelled_as=0)
  assert sizes == {
    "fold1_train": 11,
    "fold1_test": 5,
    "fold2_train": 10,
    "fold2_test": 6,
    "fold3_train": 11,
    "fold3_test": 5,
  }
  train = datasets.read_split(str(tmp_path), "BP4D", 1, "train")
  want = [e["path"].decode() for e in _examples(builder, common.tfds_split(1, "train"))]
  assert list(train.paths) == want
  assert Image.open(tmp_path / "img" / want[0]).size == (64, 64)
  w = datasets.load_class_weights(str(tmp_path), "BP4D", 1)
  np.testing.assert_allclose(w, class_weights(train.labels), atol=1e-6)
  # By default the 9 stays, as in the official lists.
  export.export_official(builder, str(tmp_path / "keep"), write_images=False)
  test1 = np.loadtxt(tmp_path / "keep" / "list" / "BP4D_test_label_fold1.txt")
  assert test1[1, bp4d.AUS.index(15)] == 9


def test_export_class_weights_leave_out_label_9(cli_build, tmp_path):
  """NAME_weight_foldK.txt: rate = #1 / #(0 or 1) per AU, the 9 (not coded) neither positive nor counted."""
  builder, _ = cli_build
  export.export_official(builder, str(tmp_path), write_images=False)
  with_9 = 0
  for k in (1, 2, 3):
    y = np.loadtxt(tmp_path / "list" / f"BP4D_train_label_fold{k}.txt", ndmin=2)
    with_9 += int(np.any(y == 9))
    rate = np.sum(y == 1, axis=0) / np.sum((y == 0) | (y == 1), axis=0)
    want = (1 / rate) / np.sum(1 / rate) * y.shape[1]
    got = datasets.load_class_weights(str(tmp_path), "BP4D", k)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)  # The file holds %f.
    np.testing.assert_allclose(got, class_weights(y), rtol=1e-6)  # What training computes ('labels').
    official = 1 / np.mean(y > 0, axis=0)  # The official tool's rule, 9 counted positive.
    assert np.any(y == 9) == (not np.allclose(got, official / official.sum() * y.shape[1], atol=1e-4))
  assert with_9 == 2  # The 9 of fold 1's test part is in the training set of folds 2 and 3.


def test_drop_unlabelled(tmp_path):
  root = make_tree(tmp_path / "raw", tasks=("T1",))
  y = _label("M011", "T1", 12)
  y[0] = 9
  _write_csv(
    os.path.join(root, "AUCoding", "AU_OCC", "M011_T1.csv"),
    [_csv_row(fr, y if fr == 12 else _label("M011", "T1", fr)) for fr in FRAMES],
  )
  builder = _build(root, tmp_path / "tfds", unlabelled="drop")
  assert [e["frame"] for e in _examples(builder, "fold2_test")] == [10, 11]
  assert builder.info.metadata["bad_input"]["counts"]["unlabelled_dropped"] == 1
  assert builder.info.metadata["unlabelled_frames"] == 1


@pytest.mark.parametrize(
  "rows,match",
  [
    ([[10, 0, 1]], r"F001_T1.csv line 2: expected 28 columns as in the header, found 3"),
    ([_csv_row(10, [0] * 11 + [7])], r"F001_T1.csv line 2, column 25 \(AU24\): unknown value '7'"),
    ([_csv_row(10, [0] * 12), _csv_row(10, [1] * 12)], r"F001_T1.csv line 3: frame 10 repeats line 2"),
  ],
)
def test_bad_label_file(tmp_path, rows, match):
  root = make_tree(tmp_path, tasks=("T1",))
  _write_csv(os.path.join(root, "AUCoding", "AU_OCC", "F001_T1.csv"), rows)
  with pytest.raises(common.RawDataError, match=match):
    bp4d.plan(root, common.RawConfig(name="t"), bp4d.align.IssueLog())


def test_bad_header(tmp_path):
  root = make_tree(tmp_path, tasks=("T1",))
  _write_csv(os.path.join(root, "AUCoding", "AU_OCC", "M011_T1.csv"), [[10, 0]], header=[0, 1])
  with pytest.raises(common.RawDataError, match=r"M011_T1.csv line 1: header lacks column\(s\) 2, 4, 6"):
    bp4d.plan(root, common.RawConfig(name="t"), bp4d.align.IssueLog())


def test_subject_in_two_folds(tmp_path):
  root = make_tree(tmp_path, tasks=("T1",))
  cfg = common.RawConfig(name="t", parts=[["F001", "M011"], ["M011"], ["F007"]])
  with pytest.raises(common.RawDataError, match="subject M011 is in groups 1 and 2"):
    bp4d.plan(root, cfg, bp4d.align.IssueLog())


def test_empty_results(tmp_path):
  root = make_tree(tmp_path / "one", subjects=("F001", "M011"), tasks=("T1",))
  with pytest.raises(common.RawDataError, match=r"no labelled frames for subject group 3 \(fold1_test: F007"):
    bp4d.plan(root, common.RawConfig(name="t"), bp4d.align.IssueLog())
  root = make_tree(tmp_path / "corrupt", tasks=("T1",))
  for fr in FRAMES:
    with open(os.path.join(root, "2D+3D", "F007", "T1", f"{fr:04d}.jpg"), "wb") as f:
      f.write(b"\xff\xd8 broken")
  with pytest.raises(common.RawDataError, match=r"every frame was skipped[\s\S]*corrupt_image: 3"):
    _build(root, tmp_path / "tfds")


def test_manual_dir_problems(tmp_path):
  with pytest.raises(AssertionError, match=r"does not exist or is empty[\s\S]*AUCoding/AU_OCC/F001_T1.csv"):
    _build(tmp_path / "missing", tmp_path / "tfds")
  (tmp_path / "wrong").mkdir()
  (tmp_path / "wrong" / "readme.txt").write_text("x")
  with pytest.raises(common.ManualDirError, match=r"no folder with AU occurrence CSVs .* holds: readme.txt"):
    bp4d.plan(str(tmp_path / "wrong"), common.RawConfig(name="t"), bp4d.align.IssueLog())
  root = make_tree(tmp_path / "zipped", tasks=("T1",))
  os.rename(os.path.join(root, "2D+3D"), os.path.join(root, "frames_extracted_later"))
  for s in MINI:
    os.rename(os.path.join(root, "frames_extracted_later", s), os.path.join(root, "frames_extracted_later", s + "x"))
  (tmp_path / "zipped" / "F001.zip").write_bytes(b"PK")
  with pytest.raises(common.ManualDirError, match=r"F001.zip: extract them"):
    bp4d.plan(root, common.RawConfig(name="t"), bp4d.align.IssueLog())


def test_mtcnn_alignment_in_build(tmp_path):
  pytest.importorskip("mtcnn")
  skdata = pytest.importorskip("skimage.data")
  photo = skdata.astronaut()

  def astronaut(seed):
    dx = seed % 20
    return Image.fromarray(photo[20 + dx : 240 + dx, 100 + dx : 320 + dx]).resize((120, 120))

  root = make_tree(tmp_path / "raw", tasks=("T1",), frames=(10, 11), image=astronaut)
  blank = Image.new("RGB", (120, 120), (128, 128, 128))  # No face: borrows the landmarks of frame 10.
  blank.save(os.path.join(root, "2D+3D", "F001", "T1", "0011.jpg"))
  builder = _build(root, tmp_path / "tfds", aligner="mtcnn", image_size=64, workers=1)
  ex = _examples(builder, "fold3_test")
  assert [e["path"].decode() for e in ex] == ["F001/T1/10.jpg", "F001/T1/11.jpg"]
  assert builder.info.metadata["bad_input"]["counts"] == {
    "missing_subject": 38,
    "missing_label_file": 21,
    "no_face_filled": 1,
  }
  # The stored face is the template-aligned crop of its frame.
  frame = np.asarray(Image.open(os.path.join(root, "2D+3D", "F007", "T1", "0010.jpg")))
  lm = bp4d.align.Detector()(frame)[0].landmarks
  want = bp4d.align.align_face(frame, lm, 64).astype(float)
  got = _examples(builder, "fold1_test")[0]["image"].astype(float)
  assert np.abs(got - want).mean() < 4.0
