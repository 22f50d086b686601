"""The dataset's list files and images, when they are wrong: each error names the file, the line and what to do."""

import os
import re

import numpy as np
import pytest
from helpers import id_dataset
from PIL import Image

from megraph_jax import task
from megraph_jax.data import datasets
from megraph_jax.data import input_pipeline as ip
from megraph_jax.errors import DatasetError

SIZE, CROP = 64, 56


@pytest.fixture()
def small(tmp_path):
  root = id_dataset(tmp_path, 5)
  return root, os.path.join(root, "list")


def _rewrite(path, lines):
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def test_missing_list_dir_says_where_and_how(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    datasets.read_split(str(tmp_path), "BP4D", 1, "train")
  msg = str(e.value)
  assert os.path.join(str(tmp_path), "list", "BP4D_train_img_path_fold1.txt") in msg
  assert "python -m data_pipelines.synthetic" in msg and "does not exist" in msg
  with pytest.raises(FileNotFoundError, match="dataset root"):
    datasets.read_split(str(tmp_path / "nope"), "BP4D", 1, "train")


def test_wrong_column_count_names_file_and_line(small):
  root, lst = small
  _rewrite(os.path.join(lst, "X_train_label_fold1.txt"), ["0 1 0", "1 0 1", "0 1", "1 0 1", "0 1 0"])
  with pytest.raises(DatasetError, match=r"X_train_label_fold1\.txt line 3: expected 3 AU label values, found 2"):
    datasets.read_split(root, "X", 1, "train")


def test_bad_label_values_name_file_and_line(small):
  root, lst = small
  path = os.path.join(lst, "X_train_label_fold1.txt")
  _rewrite(path, ["0 1 0", "1 x 1", "0 1 0", "1 0 1", "0 1 0"])
  with pytest.raises(DatasetError, match=r"X_train_label_fold1\.txt line 2, column 2: non-numeric value 'x'"):
    datasets.read_split(root, "X", 1, "train")
  _rewrite(path, ["0 1 0", "1 0 1", "0 1 0", "1 0 2", "0 1 0"])
  with pytest.raises(DatasetError, match=r"line 4, column 3: unknown AU label value '2'"):
    datasets.read_split(root, "X", 1, "train")


def test_unlabelled_value_9_is_kept_and_its_pairs_marked(small):
  """BP4D's 9 (not coded) reads as 9; its relation pairs are -1, the other pairs 2*y_j + y_k."""
  root, lst = small
  _rewrite(os.path.join(lst, "X_train_label_fold1.txt"), ["0 1 0", "1 0 1", "0 9 0", "1 0 1", "0 1 0"])
  d = datasets.read_split(root, "X", 1, "train")
  assert d.labels[2].tolist() == [0, 9, 0]
  rel = d.relations[2].reshape(3, 3)
  assert rel[1].tolist() == [-1, -1, -1] and rel[:, 1].tolist() == [-1, -1, -1]
  assert rel[0, 2] == 0 and rel[2, 0] == 0
  np.testing.assert_array_equal(
    d.relations[[0, 1, 3, 4]].reshape(4, 3, 3), 2 * d.labels[[0, 1, 3, 4], :, None] + d.labels[[0, 1, 3, 4], None, :]
  )


def test_length_mismatch_names_both_files(small):
  root, lst = small
  _rewrite(os.path.join(lst, "X_test_label_fold1.txt"), ["0 1 0"] * 4)
  with pytest.raises(
    DatasetError,
    match=r"X_test_img_path_fold1\.txt lists 5 images but X_test_label_fold1\.txt "
    r"has 4 label rows",
  ):
    datasets.read_split(root, "X", 1, "test")


def test_missing_image_is_named(small):
  """read_split names it (a DatasetError: main.py exits 2 with the message); so does reading its batch."""
  root, _ = small
  os.remove(os.path.join(root, "img", "S1", "3.png"))
  with pytest.raises(DatasetError, match=r"1 of 5 images .* missing .*S1/3\.png \(line 4\)") as e:
    datasets.read_split(root, "X", 1, "train")
  assert isinstance(e.value, FileNotFoundError)
  d = datasets.read_split(root, "X", 1, "test", check_images=False)
  ds = ip.create_eval_dataset(d, root=root, batch_size=2, image_size=SIZE, crop_size=CROP)
  with pytest.raises(
    DatasetError,
    match=r"X_test_img_path_fold1\.txt line 4: image "
    + re.escape(os.path.join(root, "img", "S1", "3.png"))
    + " does not exist",
  ) as e:
    list(ds.as_numpy_iterator())
  assert os.path.join(root, "list", "X_test_img_path_fold1.txt") in str(e.value)


def _bad_image(path, kind):
  """Overwrites ``path`` with a truncated JPEG, bytes that are no image, or nothing."""
  if kind == "truncated_jpeg":
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3)).astype(np.uint8)).save(path, "JPEG")
    data = open(path, "rb").read()
    data = data[: len(data) // 2]
  else:
    data = {"not_an_image": b"this is not an image\n", "empty": b""}[kind]
  with open(path, "wb") as f:
    f.write(data)


def _with_jpeg(root, split, k):
  """Relists image ``k`` of the _id_dataset as S1/k.jpg (line k + 1); returns that file's path."""
  lst = os.path.join(root, "list", f"X_{split}_img_path_fold1.txt")
  lines = [line.strip() for line in open(lst)]
  lines[k] = f"S1/{k}.jpg"
  _rewrite(lst, lines)
  return os.path.join(root, "img", "S1", f"{k}.jpg")


@pytest.mark.parametrize("kind", ["truncated_jpeg", "not_an_image", "empty"])
def test_bad_image_in_train_list_names_file_and_line(tmp_path, kind):
  """A bad image fails the batch holding it (mid-epoch) with a DatasetError naming it, the list and the line."""
  root = id_dataset(tmp_path, 10)
  path = _with_jpeg(root, "train", 6)
  _bad_image(path, kind)
  d = datasets.read_split(root, "X", 1, "train")
  kw = dict(root=root, batch_size=2, image_size=SIZE, crop_size=CROP, seed=3, epoch=1)
  batch_of_bad = ip.epoch_order(10, 3, 1).tolist().index(6) // 2
  seen = 0
  with pytest.raises(
    DatasetError,
    match=r"X_train_img_path_fold1\.txt line 7: image " + re.escape(path) + r" cannot be read as an image \(.+\)",
  ) as e:
    for _ in ip.create_train_dataset(d, **kw).as_numpy_iterator():
      seen += 1
  assert seen == batch_of_bad  # The batches before it are delivered.
  assert os.path.join(root, "list", "X_train_img_path_fold1.txt") in str(e.value)
  if batch_of_bad > 0:  # A resume past it does not read it.
    assert (
      len(list(ip.create_train_dataset(d, start_step=batch_of_bad + 1, **kw).as_numpy_iterator()))
      == 5 - batch_of_bad - 1
    )


@pytest.mark.parametrize("kind", ["truncated_jpeg", "not_an_image"])
def test_bad_image_in_test_list_names_file_and_line(tmp_path, kind):
  root = id_dataset(tmp_path, 7)
  path = _with_jpeg(root, "test", 4)
  _bad_image(path, kind)
  d = datasets.read_split(root, "X", 1, "test")
  ds = ip.create_eval_dataset(d, root=root, batch_size=3, image_size=SIZE, crop_size=CROP)
  it = ds.as_numpy_iterator()
  assert next(it)["index"].tolist() == [0, 1, 2]
  with pytest.raises(
    DatasetError, match=r"X_test_img_path_fold1\.txt line 5: image " + re.escape(path) + " cannot be read as an image"
  ) as e:
    next(it)
  assert os.path.join(root, "list", "X_test_img_path_fold1.txt") in str(e.value)


def test_dataset_object_keeps_the_tf_data_interface(small):
  root, _ = small
  d = datasets.read_split(root, "X", 1, "test")
  ds = ip.create_eval_dataset(d, root=root, batch_size=2, image_size=SIZE, crop_size=CROP)
  assert len(ds) == 3 and ds.element_spec["image"].shape.as_list() == [2, CROP, CROP, 3]
  assert [b["index"].numpy().tolist() for b in ds] == [[0, 1], [2, 3], [4, -1]]


@pytest.mark.parametrize("which", ["img_path", "label"])
def test_non_utf8_list_names_file_and_line(small, which):
  root, lst = small
  path = os.path.join(lst, f"X_train_{which}_fold1.txt")
  lines = open(path, "rb").read().split(b"\n")
  lines[2] = b"S1/\xe9t\xe9.png" if which == "img_path" else b"0 1 \xe90"
  open(path, "wb").write(b"\n".join(lines))
  byte = 4 if which == "img_path" else 5
  with pytest.raises(
    DatasetError,
    match=rf"X_train_{which}_fold1\.txt line 3, byte {byte}: not UTF-8 text "
    rf"\(byte 0xe9\) in {re.escape(path)}",
  ):
    datasets.read_split(root, "X", 1, "train")


def test_inconsistent_relation_file_names_line(small):
  root, lst = small
  d = datasets.read_split(root, "X", 1, "train")
  rel = task.relation_labels(d.labels)
  rel[2, 4] = 3 - rel[2, 4]
  np.savetxt(os.path.join(lst, "X_train_AU_relation_fold1.txt"), rel, fmt="%d")
  with pytest.raises(DatasetError, match=r"X_train_AU_relation_fold1\.txt line 3: relation labels disagree"):
    datasets.read_split(root, "X", 1, "train")
