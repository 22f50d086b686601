"""tf.data pipeline over the official layout: parsing and errors, batches, sharding, determinism, eval padding; the
device half of the training augmentation (``device_augment``) against torchvision."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import batch_ids, id_dataset, write_lists
from PIL import Image

from megraph_jax import task
from megraph_jax.data import datasets, device_augment, synthetic
from megraph_jax.data import input_pipeline as ip

MEAN = np.array(task.IMAGENET_MEAN)
STD = np.array(task.IMAGENET_STD)
SIZE, CROP = 64, 56


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  return synthetic.generate(
    str(tmp_path_factory.mktemp("synth")), num_subjects=3, frames_per_subject=8, image_size=64, seed=0
  )


def train_ids(batch):
  """``batch_ids`` of a training batch (uint8 pixels)."""
  return batch_ids({"image": (batch["image"] / 255 - MEAN) / STD})


def test_read_split_and_relations(synth):
  d = datasets.read_split(synth, "BP4D", 1, "train")
  assert d.num_examples == 16 and d.num_aus == 12
  assert d.labels.dtype == np.int32 and d.relations.shape == (16, 144)
  np.testing.assert_array_equal(d.relations, task.relation_labels(d.labels))
  t = datasets.read_split(synth, "BP4D", 1, "test")  # No relation file: computed from labels.
  assert t.num_examples == 8
  np.testing.assert_array_equal(t.relations, task.relation_labels(t.labels))
  assert not set(d.paths) & set(t.paths)
  np.testing.assert_allclose(datasets.load_class_weights(synth, "BP4D", 1), task.class_weights(d.labels), atol=1e-6)


def test_relation_labels_by_hand():
  rel = task.relation_labels(np.array([[1, 0, 1]]))
  assert rel.tolist() == [[3, 2, 3, 1, 0, 1, 3, 2, 3]]


def test_class_weights_by_hand():
  """The one class-weight rule (megraph_jax.task.class_weights): a 9 is neither positive nor counted."""
  y = np.array([[1, 0], [1, 1], [0, 1], [0, 1]])
  # rates .5, .75 -> 1/rate 2, 4/3 (sum 10/3) -> * 2 / (10/3).
  np.testing.assert_allclose(task.class_weights(y), [1.2, 0.8], rtol=1e-6)
  y9 = np.array([[1, 0], [1, 1], [0, 1], [0, 1], [9, 9], [9, 1]])  # Same 0/1 rates for column 0; 4/5 for column 1.
  w = 1 / np.array([1 / 2, 4 / 5])
  np.testing.assert_allclose(task.class_weights(y9, dtype=np.float64), w / w.sum() * 2, rtol=1e-12)
  with pytest.raises(ValueError, match=r"\[1\] \(AU12\) have no positive"):
    task.class_weights(np.array([[1, 0], [1, 9]]), au_names=["AU1", "AU12"])


def test_train_batches(synth):
  d = datasets.read_split(synth, "BP4D", 1, "train")
  ds = ip.create_train_dataset(d, root=synth, batch_size=5, image_size=SIZE, crop_size=CROP, seed=0, epoch=0)
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == ip.num_train_steps_per_epoch(16, 5) == 3
  b = batches[0]
  assert b["image"].shape == (5, CROP, CROP, 3) and b["image"].dtype == np.uint8
  assert b["jitter"].shape == (5, 3, 3) and b["jitter"].dtype == np.float32
  assert b["label"].shape == (5, 12) and b["label"].dtype == np.float32
  assert b["relation"].shape == (5, 144) and b["relation"].dtype == np.int32
  np.testing.assert_array_equal(b["relation"], task.relation_labels(b["label"]))
  # The train step's model inputs (device_augment.model_images: colour jitter, normalisation).
  imgs = np.concatenate([np.asarray(device_augment.model_images(x["image"], x["jitter"])) for x in batches])
  assert imgs.dtype == np.float32
  lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
  assert np.all(imgs >= lo - 1e-5) and np.all(imgs <= hi + 1e-5)
  assert np.all(np.abs(imgs.mean((0, 1, 2))) < 1.5) and np.all(imgs.std((0, 1, 2)) > 0.2)


def test_same_seed_epoch_same_batches_other_epoch_differs(synth):
  d = datasets.read_split(synth, "BP4D", 2, "train")
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
  root = id_dataset(tmp_path, 11)
  d = datasets.read_split(root, "X", 1, "train")
  kw = dict(root=root, image_size=SIZE, crop_size=CROP, seed=2, epoch=3, color_jitter=False)
  shards = [
    [
      train_ids(b)
      for b in ip.create_train_dataset(d, batch_size=2, process_index=p, process_count=2, **kw).as_numpy_iterator()
    ]
    for p in (0, 1)
  ]
  single = [train_ids(b) for b in ip.create_train_dataset(d, batch_size=4, **kw).as_numpy_iterator()]
  assert len(shards[0]) == len(shards[1]) == len(single) == 2  # 11 // 4, remainder dropped.
  flat = [sum(s, []) for s in shards]
  assert not set(flat[0]) & set(flat[1])
  assert sorted(flat[0] + flat[1]) == sorted(ip.epoch_order(11, 2, 3)[:8].tolist())
  for g in range(2):  # Global batch g is the same with 1 or 2 processes.
    assert shards[0][g] + shards[1][g] == single[g]
  labels = next(ip.create_train_dataset(d, batch_size=4, **kw).as_numpy_iterator())["label"]
  np.testing.assert_array_equal(labels, d.labels[single[0]])
  resumed = [train_ids(b) for b in ip.create_train_dataset(d, batch_size=4, start_step=1, **kw).as_numpy_iterator()]
  assert resumed == single[1:]


@pytest.mark.parametrize("count,batch", [(1, 4), (2, 3)])
def test_eval_covers_every_image_once_with_mask(tmp_path, count, batch):
  root = id_dataset(tmp_path, 11)
  d = datasets.read_split(root, "X", 1, "test")
  seen = []
  steps = []
  for p in range(count):
    out = list(
      ip.create_eval_dataset(
        d, root=root, batch_size=batch, image_size=SIZE, crop_size=CROP, process_index=p, process_count=count
      ).as_numpy_iterator()
    )
    steps.append(len(out))
    for b in out:
      assert b["image"].shape == (batch, CROP, CROP, 3) and b["mask"].shape == (batch,)
      real = b["mask"] == 1
      ids = np.array(batch_ids(b))
      np.testing.assert_array_equal(ids[real], b["index"][real])
      np.testing.assert_array_equal(b["label"][real], d.labels[b["index"][real]])
      assert np.all(b["index"][~real] == -1)
      seen += b["index"][real].tolist()
  assert len(set(steps)) == 1 and steps[0] == ip.num_eval_steps(11, batch * count)
  assert sorted(seen) == list(range(11))


def eval_batch_of(img: np.ndarray, tmp_path) -> dict:
  """The eval pipeline's batch of one image (written as ``tmp_path/img/a.png``, listed with labels [1, 0])."""
  os.makedirs(tmp_path / "img")
  Image.fromarray(img).save(tmp_path / "img" / "a.png")
  write_lists(str(tmp_path), "X", "test", ["a.png"], np.array([[1, 0]]))
  d = datasets.read_split(str(tmp_path), "X", 1, "test")
  return next(
    ip.create_eval_dataset(d, root=str(tmp_path), batch_size=1, image_size=SIZE, crop_size=CROP).as_numpy_iterator()
  )


def test_normalisation_and_centre_crop_exact(tmp_path):
  img = np.zeros((40, 50, 3), np.uint8)
  img[:, :, :] = np.rint(MEAN * 255).astype(np.uint8)
  img[:, :5] = 255  # Left border: cropped away by the centre crop (resize 64 -> 64x80, crop 56 at x=12).
  b = eval_batch_of(img, tmp_path)
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
  rounded = ip._decode_resize(str(tmp_path / "a.png"), 64, uint8=True).numpy()  # the training crops' pixels
  assert rounded.dtype == np.uint8 and np.abs(rounded - ref).mean() < 1.5
  np.testing.assert_array_equal(rounded, np.floor(got + 0.5))
  same = ip._decode_resize(str(tmp_path / "a.png"), 120).numpy()  # of that size already: as decoded, exactly
  np.testing.assert_array_equal(same, img.astype(np.float32))


def test_grayscale_jpeg_and_rgba_png_decode(tmp_path):
  os.makedirs(tmp_path / "img")
  Image.fromarray(np.full((30, 30), 128, np.uint8), "L").save(tmp_path / "img" / "g.jpg")
  Image.fromarray(np.full((30, 30, 4), 200, np.uint8), "RGBA").save(tmp_path / "img" / "c.png")
  write_lists(str(tmp_path), "X", "train", ["g.jpg", "c.png"], np.array([[1, 0], [0, 1]]))
  d = datasets.read_split(str(tmp_path), "X", 1, "train")
  b = next(
    ip.create_train_dataset(
      d, root=str(tmp_path), batch_size=2, image_size=32, crop_size=28, seed=0, epoch=0
    ).as_numpy_iterator()
  )
  assert b["image"].shape == (2, 28, 28, 3) and np.all(np.isfinite(b["image"]))


# ------------------------------------------------------------------------------------------------
# Bad inputs: each error names the file and the line (or the expected path and how to prepare it).


def test_bad_arguments(synth):
  d = datasets.read_split(synth, "BP4D", 1, "train")
  with pytest.raises(ValueError, match="fewer than one global batch"):
    ip.create_train_dataset(d, root=synth, batch_size=9, process_count=2, seed=0, epoch=0)
  with pytest.raises(ValueError, match="process_index"):
    ip.create_eval_dataset(d, root=synth, batch_size=2, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="fold"):
    datasets.read_split(synth, "BP4D", 4, "train")
  assert ip.num_train_steps_per_epoch(17, 4) == 4 and ip.num_eval_steps(17, 4) == 5


TORCHVISION_JITTER = """
import sys
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as F

d = np.load(sys.argv[1])
ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
pil, tensor = [], []
for img, order, f in zip(d["images"], d["orders"], d["factors"]):
  p = Image.fromarray(img)
  t = torch.from_numpy(img).permute(2, 0, 1).float() / 255
  for op in order:
    p = ops[op](p, float(f[op]))
    t = ops[op](t, float(f[op]))
  pil.append(np.asarray(p, np.float32) / 255)
  tensor.append(t.permute(1, 2, 0).numpy())
np.savez(sys.argv[2], pil=np.stack(pil), tensor=np.stack(tensor))
"""


def test_color_jitter_matches_torchvision_in_every_order(tmp_path):
  """``device_augment.color_jitter`` against torchvision.transforms.functional adjust_brightness/contrast/saturation.

  The steps run in each of the 6 orders ColorJitter draws, with its factors (uniform in [0.6, 1.4]
  and the extremes), on one batch as the train step runs them. torchvision runs in a subprocess: it can segfault in
  a process that imported TensorFlow. Two references:
  - float tensors (torchvision's tensor kernels): the same formula; the only difference is the grey
    level, 0.2989 R in torchvision's rgb_to_grayscale and 0.299 R (PIL's, what the official code uses) here,
    at most 1e-4 per step: tolerance 2e-4.
  - PIL images, as the official image_train (ColorJitter on the PIL crop, then ToTensor): PIL keeps
    uint8 after every step, truncating each blend down (and rounds the grey image and the contrast
    mean), which we do not. Each step is off by less than 1/255 (+0.2/255 of grey rounding) plus the
    previous error times at most 1.8, so the error after 3 steps is below 7.2/255 and biased upwards;
    the measured maximum is ~4.1/255, the mean ~1.3/255. Tolerances 5/255 (max) and 2/255 (mean).
  """
  rng = np.random.default_rng(0)
  k = 120
  images = rng.integers(0, 256, (k, 12, 10, 3)).astype(np.uint8)
  order_ids = np.arange(k) % 6
  factors = rng.uniform(0.6, 1.4, (k, 3))
  factors[:12] = [[1.4, 0.6, 1.4]] * 6 + [[0.6, 1.4, 0.6]] * 6
  np.savez(tmp_path / "in.npz", images=images, orders=device_augment.JITTER_ORDERS[order_ids], factors=factors)
  (tmp_path / "ref.py").write_text(TORCHVISION_JITTER)
  proc = subprocess.run(
    [sys.executable, str(tmp_path / "ref.py"), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  ref = np.load(tmp_path / "out.npz")
  slots = device_augment.jitter_slots(factors, order_ids)
  got = np.asarray(jax.jit(device_augment.color_jitter)(images.astype(np.float32) / 255, slots))
  np.testing.assert_allclose(got, ref["tensor"], atol=2e-4, rtol=0)
  diff = got - ref["pil"]
  assert np.abs(diff).max() <= 5 / 255, np.abs(diff).max() * 255
  assert 0 <= diff.mean() <= 2 / 255 and np.abs(diff).mean() <= 2 / 255, (diff.mean() * 255, np.abs(diff).mean() * 255)
  one = np.asarray(device_augment.color_jitter(images[0].astype(np.float32) / 255, slots[0]))  # one image, [3, 3]
  np.testing.assert_allclose(one, got[0], atol=1e-6)
  assert not np.allclose(got[0], device_augment.color_jitter(images[0].astype(np.float32) / 255, slots[5]))  # order


def test_model_images_normalise_as_the_eval_pipeline(tmp_path):
  """uint8 pixels -> (x / 255 - mean) / std, as the eval batches (and transforms.eval_transform) give them; no jitter
  with factors 1; float images are already model inputs and pass unchanged (a jitter for them is refused)."""
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)  # the resize size: eval crops these very pixels
  b = eval_batch_of(img, tmp_path)
  o = (SIZE - CROP) // 2
  pixels = img[None, o : o + CROP, o : o + CROP]
  got = np.asarray(jax.jit(device_augment.model_images)(pixels))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, b["image"], atol=1e-6, rtol=0)
  np.testing.assert_allclose(got, ((pixels / 255 - MEAN) / STD).astype(np.float32), atol=1e-6, rtol=0)
  identity = device_augment.jitter_slots(np.ones((1, 3)), np.array([3]))
  np.testing.assert_allclose(device_augment.model_images(pixels, identity), got, atol=1e-6, rtol=0)
  assert device_augment.model_images(b["image"]) is b["image"]
  with pytest.raises(ValueError, match="uint8"):
    device_augment.model_images(b["image"], identity)


@pytest.mark.parametrize("size,crop", [(SIZE, CROP), (48, 40)])  # stored 64 px: as stored; resized
def test_uint8_crops_equal_the_float_pipeline(synth, size, crop):
  """The uint8 crops are the float pipeline's before jitter and normalisation (decode, resize, crop at the drawn
  offset, flip), rounded: equal to them exactly for images of the resize size already."""
  d = datasets.read_split(synth, "BP4D", 1, "train")
  kw = dict(batch_size=4, image_size=size, crop_size=crop, seed=7, epoch=2)
  got = np.concatenate([b["image"] for b in ip.create_train_dataset(d, root=synth, **kw).as_numpy_iterator()])
  columns, _, _ = ip._train_columns(d, synth, kw["batch_size"], size, crop, 7, 2, 0, 1, 0)
  assert got.dtype == np.uint8 and len(got) == len(columns["path"]) == 16
  for k, (path, a) in enumerate(zip(columns["path"], columns["aug"])):
    full = ip._decode_resize(str(path), size).numpy()  # float32, unrounded: the float pipeline's pixels
    h, w = full.shape[:2]
    oy = min(int(a[0] * np.float32(h - crop + 1)), h - crop)
    ox = min(int(a[1] * np.float32(w - crop + 1)), w - crop)
    want = full[oy : oy + crop, ox : ox + crop]
    want = want[:, ::-1] if a[2] < 0.5 else want
    np.testing.assert_array_equal(got[k], np.floor(np.clip(want, 0, 255) + 0.5).astype(np.uint8), err_msg=str(k))
    if size == SIZE:
      np.testing.assert_array_equal(got[k].astype(np.float32), want)
  assert {bool(a[2] < 0.5) for a in columns["aug"]} == {True, False}  # both flips seen
