"""tf.data pipeline over the official layout: parsing and errors, batches, sharding, determinism, eval padding."""

import os

import numpy as np
import pytest
from PIL import Image

from data_pipelines import input_pipeline as ip
from data_pipelines import synthetic

MEAN = np.array(ip.IMAGENET_MEAN)
STD = np.array(ip.IMAGENET_STD)
SIZE, CROP = 64, 56


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  return synthetic.generate(str(tmp_path_factory.mktemp("synth")), num_subjects=3, frames_per_subject=8,
                            image_size=64, seed=0)


def _write_lists(root, name, split, paths, labels, fold=1):
  os.makedirs(os.path.join(root, "list"), exist_ok=True)
  with open(os.path.join(root, "list", f"{name}_{split}_img_path_fold{fold}.txt"), "w") as f:
    f.write("".join(p + "\n" for p in paths))
  np.savetxt(os.path.join(root, "list", f"{name}_{split}_label_fold{fold}.txt"), labels, fmt="%d")


def _id_dataset(root, n, num_aus=3):
  """Constant-colour PNGs whose red value encodes the index (crop/flip/resize keep it)."""
  paths = []
  for k in range(n):
    p = f"S1/{k}.png"
    os.makedirs(os.path.join(root, "img", "S1"), exist_ok=True)
    Image.fromarray(np.full((40, 48, 3), (10 + 20 * k, 50, 90), np.uint8)).save(os.path.join(root, "img", p))
    paths.append(p)
  labels = (np.arange(n)[:, None] + np.arange(num_aus)[None]) % 2
  _write_lists(str(root), "X", "train", paths, labels)
  _write_lists(str(root), "X", "test", paths, labels)
  return str(root)


def _ids(batch):
  red = batch["image"][:, :, :, 0] * STD[0] + MEAN[0]  # [B, H, W] in [0, 1]
  v = red.reshape(red.shape[0], -1).mean(1) * 255
  return np.rint((v - 10) / 20).astype(int).tolist()


def test_read_split_and_relations(synth):
  d = ip.read_split(synth, "BP4D", 1, "train")
  assert d.num_examples == 16 and d.num_aus == 12
  assert d.labels.dtype == np.int32 and d.relations.shape == (16, 144)
  np.testing.assert_array_equal(d.relations, ip.relation_labels(d.labels))
  t = ip.read_split(synth, "BP4D", 1, "test")  # No relation file: computed from labels.
  assert t.num_examples == 8
  np.testing.assert_array_equal(t.relations, ip.relation_labels(t.labels))
  assert not set(d.paths) & set(t.paths)
  np.testing.assert_allclose(ip.load_class_weights(synth, "BP4D", 1), ip.class_weights(d.labels), atol=1e-6)


def test_relation_labels_by_hand():
  rel = ip.relation_labels(np.array([[1, 0, 1]]))
  assert rel.tolist() == [[3, 2, 3, 1, 0, 1, 3, 2, 3]]


def test_class_weights_by_hand():
  y = np.array([[1, 0], [1, 1], [0, 1], [0, 1]])
  # rates .5, .75 -> 1/rate 2, 4/3 (sum 10/3) -> * 2 / (10/3).
  np.testing.assert_allclose(ip.class_weights(y), [1.2, 0.8])
  with pytest.raises(ValueError, match="AU12 have no positive"):
    ip.class_weights(np.array([[1, 0], [1, 0]]), au_names=["AU1", "AU12"])


def test_train_batches(synth):
  d = ip.read_split(synth, "BP4D", 1, "train")
  ds = ip.create_train_dataset(d, root=synth, batch_size=5, image_size=SIZE, crop_size=CROP, seed=0, epoch=0)
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == ip.num_train_steps_per_epoch(16, 5) == 3
  b = batches[0]
  assert b["image"].shape == (5, CROP, CROP, 3) and b["image"].dtype == np.float32
  assert b["label"].shape == (5, 12) and b["label"].dtype == np.float32
  assert b["relation"].shape == (5, 144) and b["relation"].dtype == np.int32
  np.testing.assert_array_equal(b["relation"], ip.relation_labels(b["label"]))
  imgs = np.concatenate([x["image"] for x in batches])
  lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
  assert np.all(imgs >= lo - 1e-5) and np.all(imgs <= hi + 1e-5)
  assert np.all(np.abs(imgs.mean((0, 1, 2))) < 1.5) and np.all(imgs.std((0, 1, 2)) > 0.2)


def test_same_seed_epoch_same_batches_other_epoch_differs(synth):
  d = ip.read_split(synth, "BP4D", 2, "train")
  kw = dict(root=synth, batch_size=4, image_size=SIZE, crop_size=CROP, seed=5)
  a = list(ip.create_train_dataset(d, epoch=1, **kw).as_numpy_iterator())
  b = list(ip.create_train_dataset(d, epoch=1, **kw).as_numpy_iterator())
  c = list(ip.create_train_dataset(d, epoch=2, **kw).as_numpy_iterator())
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  assert not np.array_equal(ip.epoch_order(100, 5, 1), ip.epoch_order(100, 5, 2))
  assert sorted(ip.epoch_order(100, 5, 1)) == list(range(100))


def test_process_shards_are_disjoint_and_match_one_process(tmp_path):
  root = _id_dataset(tmp_path, 11)
  d = ip.read_split(root, "X", 1, "train")
  kw = dict(root=root, image_size=SIZE, crop_size=CROP, seed=2, epoch=3, color_jitter=False)
  shards = [[_ids(b) for b in ip.create_train_dataset(d, batch_size=2, process_index=p, process_count=2,
                                                       **kw).as_numpy_iterator()] for p in (0, 1)]
  single = [_ids(b) for b in ip.create_train_dataset(d, batch_size=4, **kw).as_numpy_iterator()]
  assert len(shards[0]) == len(shards[1]) == len(single) == 2  # 11 // 4, remainder dropped.
  flat = [sum(s, []) for s in shards]
  assert not set(flat[0]) & set(flat[1])
  assert sorted(flat[0] + flat[1]) == sorted(ip.epoch_order(11, 2, 3)[:8].tolist())
  for g in range(2):  # Global batch g is the same with 1 or 2 processes.
    assert shards[0][g] + shards[1][g] == single[g]
  labels = next(ip.create_train_dataset(d, batch_size=4, **kw).as_numpy_iterator())["label"]
  np.testing.assert_array_equal(labels, d.labels[single[0]])
  resumed = [_ids(b) for b in ip.create_train_dataset(d, batch_size=4, start_step=1, **kw).as_numpy_iterator()]
  assert resumed == single[1:]


@pytest.mark.parametrize("count,batch", [(1, 4), (2, 3)])
def test_eval_covers_every_image_once_with_mask(tmp_path, count, batch):
  root = _id_dataset(tmp_path, 11)
  d = ip.read_split(root, "X", 1, "test")
  seen = []
  steps = []
  for p in range(count):
    out = list(ip.create_eval_dataset(d, root=root, batch_size=batch, image_size=SIZE, crop_size=CROP,
                                      process_index=p, process_count=count).as_numpy_iterator())
    steps.append(len(out))
    for b in out:
      assert b["image"].shape == (batch, CROP, CROP, 3) and b["mask"].shape == (batch,)
      real = b["mask"] == 1
      ids = np.array(_ids(b))
      np.testing.assert_array_equal(ids[real], b["index"][real])
      np.testing.assert_array_equal(b["label"][real], d.labels[b["index"][real]])
      assert np.all(b["index"][~real] == -1)
      seen += b["index"][real].tolist()
  assert len(set(steps)) == 1 and steps[0] == ip.num_eval_steps(11, batch * count)
  assert sorted(seen) == list(range(11))


def test_normalisation_and_centre_crop_exact(tmp_path):
  img = np.zeros((40, 50, 3), np.uint8)
  img[:, :, :] = np.rint(MEAN * 255).astype(np.uint8)
  img[:, :5] = 255  # Left border: cropped away by the centre crop (resize 64 -> 64x80, crop 56 at x=12).
  os.makedirs(tmp_path / "img")
  Image.fromarray(img).save(tmp_path / "img" / "a.png")
  _write_lists(str(tmp_path), "X", "test", ["a.png"], np.array([[1, 0]]))
  d = ip.read_split(str(tmp_path), "X", 1, "test")
  b = next(ip.create_eval_dataset(d, root=str(tmp_path), batch_size=1, image_size=SIZE,
                                  crop_size=CROP).as_numpy_iterator())
  expect = (np.rint(MEAN * 255) / 255 - MEAN) / STD
  np.testing.assert_allclose(b["image"][0], np.broadcast_to(expect, (CROP, CROP, 3)), atol=1e-5)


def test_resize_matches_pil(tmp_path):
  rng = np.random.default_rng(0)
  small = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
  img = np.asarray(Image.fromarray(small).resize((160, 120), Image.BICUBIC))  # Smooth 120x160 image.
  Image.fromarray(img).save(tmp_path / "a.png")
  got = ip._decode_resize(str(tmp_path / "a.png"), 64).numpy()
  assert got.shape == (64, 85, 3)  # torchvision Resize(64): long side int(64 * 160 / 120).
  ref = np.asarray(Image.fromarray(img).resize((85, 64), Image.BILINEAR), np.float64)
  assert np.abs(got - ref).mean() < 1.5


def test_grayscale_jpeg_and_rgba_png_decode(tmp_path):
  os.makedirs(tmp_path / "img")
  Image.fromarray(np.full((30, 30), 128, np.uint8), "L").save(tmp_path / "img" / "g.jpg")
  Image.fromarray(np.full((30, 30, 4), 200, np.uint8), "RGBA").save(tmp_path / "img" / "c.png")
  _write_lists(str(tmp_path), "X", "train", ["g.jpg", "c.png"], np.array([[1, 0], [0, 1]]))
  d = ip.read_split(str(tmp_path), "X", 1, "train")
  b = next(ip.create_train_dataset(d, root=str(tmp_path), batch_size=2, image_size=32, crop_size=28, seed=0,
                                   epoch=0).as_numpy_iterator())
  assert b["image"].shape == (2, 28, 28, 3) and np.all(np.isfinite(b["image"]))


# ------------------------------------------------------------------------------------------------
# Bad inputs: each error names the file and the line (or the expected path and how to prepare it).


@pytest.fixture()
def small(tmp_path):
  root = _id_dataset(tmp_path, 5)
  return root, os.path.join(root, "list")


def _rewrite(path, lines):
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def test_missing_list_dir_says_where_and_how(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    ip.read_split(str(tmp_path), "BP4D", 1, "train")
  msg = str(e.value)
  assert os.path.join(str(tmp_path), "list", "BP4D_train_img_path_fold1.txt") in msg
  assert "python -m data_pipelines.synthetic" in msg and "does not exist" in msg
  with pytest.raises(FileNotFoundError, match="dataset root"):
    ip.read_split(str(tmp_path / "nope"), "BP4D", 1, "train")


def test_wrong_column_count_names_file_and_line(small):
  root, lst = small
  _rewrite(os.path.join(lst, "X_train_label_fold1.txt"), ["0 1 0", "1 0 1", "0 1", "1 0 1", "0 1 0"])
  with pytest.raises(ip.DatasetError, match=r"X_train_label_fold1\.txt line 3: expected 3 AU label values, found 2"):
    ip.read_split(root, "X", 1, "train")


def test_bad_label_values_name_file_and_line(small):
  root, lst = small
  path = os.path.join(lst, "X_train_label_fold1.txt")
  _rewrite(path, ["0 1 0", "1 x 1", "0 1 0", "1 0 1", "0 1 0"])
  with pytest.raises(ip.DatasetError, match=r"X_train_label_fold1\.txt line 2, column 2: non-numeric value 'x'"):
    ip.read_split(root, "X", 1, "train")
  _rewrite(path, ["0 1 0", "1 0 1", "0 1 0", "1 0 2", "0 1 0"])
  with pytest.raises(ip.DatasetError, match=r"line 4, column 3: unknown AU label value '2'"):
    ip.read_split(root, "X", 1, "train")


def test_unlabelled_value_9_is_kept_and_its_pairs_marked(small):
  """BP4D's 9 (not coded) reads as 9; its relation pairs are -1, the other pairs 2*y_j + y_k."""
  root, lst = small
  _rewrite(os.path.join(lst, "X_train_label_fold1.txt"), ["0 1 0", "1 0 1", "0 9 0", "1 0 1", "0 1 0"])
  d = ip.read_split(root, "X", 1, "train")
  assert d.labels[2].tolist() == [0, 9, 0]
  rel = d.relations[2].reshape(3, 3)
  assert rel[1].tolist() == [-1, -1, -1] and rel[:, 1].tolist() == [-1, -1, -1]
  assert rel[0, 2] == 0 and rel[2, 0] == 0
  np.testing.assert_array_equal(d.relations[[0, 1, 3, 4]].reshape(4, 3, 3),
                                2 * d.labels[[0, 1, 3, 4], :, None] + d.labels[[0, 1, 3, 4], None, :])


def test_length_mismatch_names_both_files(small):
  root, lst = small
  _rewrite(os.path.join(lst, "X_test_label_fold1.txt"), ["0 1 0"] * 4)
  with pytest.raises(ip.DatasetError, match=r"X_test_img_path_fold1\.txt lists 5 images but X_test_label_fold1\.txt "
                     r"has 4 label rows"):
    ip.read_split(root, "X", 1, "test")


def test_missing_image_is_named(small):
  root, _ = small
  os.remove(os.path.join(root, "img", "S1", "3.png"))
  with pytest.raises(FileNotFoundError, match=r"1 of 5 images .* missing .*S1/3\.png \(line 4\)"):
    ip.read_split(root, "X", 1, "train")
  ip.read_split(root, "X", 1, "train", check_images=False)


def test_inconsistent_relation_file_names_line(small):
  root, lst = small
  d = ip.read_split(root, "X", 1, "train")
  rel = ip.relation_labels(d.labels)
  rel[2, 4] = 3 - rel[2, 4]
  np.savetxt(os.path.join(lst, "X_train_AU_relation_fold1.txt"), rel, fmt="%d")
  with pytest.raises(ip.DatasetError, match=r"X_train_AU_relation_fold1\.txt line 3: relation labels disagree"):
    ip.read_split(root, "X", 1, "train")


def test_bad_arguments(synth):
  d = ip.read_split(synth, "BP4D", 1, "train")
  with pytest.raises(ValueError, match="fewer than one global batch"):
    ip.create_train_dataset(d, root=synth, batch_size=9, process_count=2, seed=0, epoch=0)
  with pytest.raises(ValueError, match="process_index"):
    ip.create_eval_dataset(d, root=synth, batch_size=2, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="fold"):
    ip.read_split(synth, "BP4D", 4, "train")
  assert ip.num_train_steps_per_epoch(17, 4) == 4 and ip.num_eval_steps(17, 4) == 5


def test_color_jitter_matches_reference_in_every_order():
  rng = np.random.default_rng(0)
  img = rng.random((6, 7, 3)).astype(np.float32)
  factors = np.array([[1.3, 0.7, 1.2]] * 6)
  slots = ip._jitter_slots(factors, np.arange(6))
  gray = lambda x: x @ np.array([0.299, 0.587, 0.114])  # noqa: E731
  ref_ops = (lambda x: np.clip(1.3 * x, 0, 1),
             lambda x: np.clip(0.7 * x + 0.3 * gray(x).mean(), 0, 1),
             lambda x: np.clip(1.2 * x - 0.2 * gray(x)[..., None], 0, 1))
  outs = []
  for k, order in enumerate(ip._JITTER_ORDERS):
    ref = img
    for op in order:
      ref = ref_ops[op](ref)
    got = ip._color_jitter(ip._tf().constant(img), ip._tf().constant(slots[k])).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    outs.append(got)
  assert not np.allclose(outs[0], outs[5])  # The order matters (clipping).
