"""Synthetic AU-face set: official layout and formats, determinism, folds, label statistics, rendering."""

import filecmp
import logging
import os
import re

import numpy as np
import pytest
from PIL import Image

from data_pipelines import synthetic as synthetic_cli
from megraph_jax.data import synthetic

BP4D_KW = dict(name="BP4D", num_subjects=6, frames_per_subject=12, image_size=64, seed=3)


def _list(root, name):
  return os.path.join(root, "list", name)


def _read_paths(path):
  with open(path) as f:
    return f.read().splitlines()


@pytest.fixture(scope="module")
def bp4d(tmp_path_factory):
  return synthetic.generate(str(tmp_path_factory.mktemp("bp4d")), **BP4D_KW)


def _all_files(root):
  out = []
  for d, _, files in os.walk(root):
    out += [os.path.relpath(os.path.join(d, f), root) for f in files]
  return sorted(out)


def test_same_seed_gives_identical_files_and_other_seed_differs(bp4d, tmp_path):
  again = synthetic.generate(str(tmp_path / "again"), **BP4D_KW)
  files = _all_files(bp4d)
  assert files == _all_files(again)
  match, mismatch, errors = filecmp.cmpfiles(bp4d, again, files, shallow=False)
  assert not mismatch and not errors and len(match) == 6 * 12 + 18 + 1
  other = synthetic.generate(str(tmp_path / "other"), **{**BP4D_KW, "seed": 4})
  assert not filecmp.cmp(
    _list(bp4d, "BP4D_train_label_fold1.txt"), _list(other, "BP4D_train_label_fold1.txt"), shallow=False
  )


def test_official_list_formats(bp4d):
  n = 12
  for k in (1, 2, 3):
    for split in ("train", "test"):
      paths = _read_paths(_list(bp4d, f"BP4D_{split}_img_path_fold{k}.txt"))
      labels = np.loadtxt(_list(bp4d, f"BP4D_{split}_label_fold{k}.txt"))
      assert labels.shape == (len(paths), n)
      assert set(np.unique(labels)) <= {0.0, 1.0}
      for p in paths:
        assert re.fullmatch(r"[FM]\d{3}/T[1-8]/\d+\.jpg", p), p
      img = Image.open(os.path.join(bp4d, "img", paths[0]))
      assert img.size == (64, 64) and img.mode == "RGB" and img.format == "JPEG"
    y = np.loadtxt(_list(bp4d, f"BP4D_train_label_fold{k}.txt"))
    rel = np.loadtxt(_list(bp4d, f"BP4D_train_AU_relation_fold{k}.txt"))
    assert rel.shape == (y.shape[0], n * n)
    for j in range(n):
      for i in range(n):
        np.testing.assert_array_equal(rel[:, j * n + i], 2 * y[:, j] + y[:, i])
    with open(_list(bp4d, f"BP4D_weight_fold{k}.txt")) as f:
      text = f.read()
    assert text.count("\t") == n - 1 and text.count("\n") == 1
    w = np.loadtxt(_list(bp4d, f"BP4D_weight_fold{k}.txt"))
    rate = (y > 0).sum(0) / y.shape[0]
    expect = (1 / rate) / (1 / rate).sum() * n  # The official tool, by hand.
    np.testing.assert_allclose(w, expect, atol=1e-6)


def test_folds_are_subject_independent_and_cover_all_subjects(bp4d):
  tests = []
  for k in (1, 2, 3):
    subj = {
      split: {p.split("/")[0] for p in _read_paths(_list(bp4d, f"BP4D_{split}_img_path_fold{k}.txt"))}
      for split in ("train", "test")
    }
    assert not subj["train"] & subj["test"]
    assert len(subj["train"] | subj["test"]) == 6
    tests.append(subj["test"])
  assert set.union(*tests) == {f"{g}{i:03d}" for g in "FM" for i in (1, 2, 3)}
  assert sum(len(t) for t in tests) == 6


def test_every_au_has_positives_in_every_fold(bp4d):
  for k in (1, 2, 3):
    for split in ("train", "test"):
      y = np.loadtxt(_list(bp4d, f"BP4D_{split}_label_fold{k}.txt"))
      assert np.all(y.sum(0) > 0), (k, split, y.sum(0))


def test_label_model_cooccurrence_and_imbalance():
  scores = np.concatenate(
    [synthetic.sample_subject_scores(np.random.default_rng([9, s]), synthetic._task_lengths(40, 8)) for s in range(150)]
  )
  y = scores > 0
  col = {au: y[:, i] for i, au in enumerate(synthetic.ALL_AUS)}

  def p(a, given=None):
    return col[a].mean() if given is None else col[a][col[given]].mean()

  for a, b in ((12, 6), (6, 12), (2, 1), (1, 2), (17, 15), (24, 23), (23, 24), (26, 25)):
    assert p(a, b) > p(a) + 0.1, (a, b, p(a, b), p(a))
  assert p(12, 4) < p(12) - 0.1 and p(4, 12) < p(4)
  for au in (6, 7, 10, 12, 14):
    assert 0.35 < p(au) < 0.7, (au, p(au))
  for au in (1, 2, 15, 23, 24):
    assert 0.08 < p(au) < 0.3, (au, p(au))
  assert np.mean(col[26] & ~col[25]) < 0.02  # Jaw drop almost always with parted lips.


def test_each_au_changes_its_own_region():
  ident = synthetic.sample_identity(np.random.default_rng(0))
  size = 96

  def render(aus):
    r = np.zeros(len(synthetic.ALL_AUS))
    for a in aus:
      r[synthetic.ALL_AUS.index(a)] = 1.0
    return synthetic.render_face(ident, r, np.random.default_rng(1), size).astype(np.float64)

  base = render([])
  assert np.array_equal(base, render([]))
  rows = {}
  for au in synthetic.ALL_AUS:
    diff = np.abs(render([au]) - base).sum(-1)
    assert diff.sum() > 200 * synthetic.FAINT_AUS.get(au, 1.0), au
    rows[au] = float((diff.sum(1) * np.arange(size)).sum() / diff.sum())  # Row centroid of the change.
  for upper in (1, 2, 4, 7):
    for lower in (12, 15, 17, 23, 24, 25, 26):
      assert rows[upper] + 10 < rows[lower], (upper, lower, rows)


def test_disfa_layout(tmp_path):
  root = synthetic.generate(
    str(tmp_path / "d"), name="DISFA", num_subjects=3, frames_per_subject=6, image_size=48, seed=0
  )
  paths = _read_paths(_list(root, "DISFA_train_img_path_fold1.txt"))
  assert len(paths) == 12 and all(re.fullmatch(r"SN\d{3}/\d+\.png", p) for p in paths)
  assert np.loadtxt(_list(root, "DISFA_test_label_fold1.txt")).shape == (6, 8)
  assert np.loadtxt(_list(root, "DISFA_train_AU_relation_fold1.txt")).shape == (12, 64)
  assert Image.open(os.path.join(root, "img", paths[0])).format == "PNG"


def test_custom_aus_and_bad_arguments(tmp_path):
  root = synthetic.generate(
    str(tmp_path / "c"), name="MINE", num_subjects=3, frames_per_subject=5, image_size=40, aus=[25, 12, 9]
  )
  assert np.loadtxt(_list(root, "MINE_train_label_fold2.txt")).shape == (10, 3)
  with pytest.raises(ValueError, match="subset"):
    synthetic.generate(str(tmp_path / "x"), name="MINE")
  with pytest.raises(ValueError, match="distinct AUs"):
    synthetic.generate(str(tmp_path / "x"), aus=[1, 3])
  with pytest.raises(ValueError, match=">= 3"):
    synthetic.generate(str(tmp_path / "x"), num_subjects=2)


def test_ensure_generated_caches_atomically(tmp_path, caplog):
  kw = dict(name="BP4D", num_subjects=3, frames_per_subject=5, image_size=40, seed=1)
  caplog.set_level(logging.INFO)
  root = synthetic.ensure_generated(str(tmp_path), **kw)
  # Said before the silent generation (issue 23, item 8); a cache hit says nothing.
  assert f"generating the synthetic BP4D set (15 images of 40 px) in {root}: once" in caplog.text
  caplog.clear()
  stamp = os.stat(os.path.join(root, "synthetic.json")).st_mtime_ns
  assert synthetic.ensure_generated(str(tmp_path), **kw) == root
  assert "generating" not in caplog.text
  assert os.stat(os.path.join(root, "synthetic.json")).st_mtime_ns == stamp
  assert os.listdir(tmp_path) == [os.path.basename(root)]  # No temporary folders left.
  other = synthetic.ensure_generated(str(tmp_path), **{**kw, "seed": 2})
  assert other != root and len(os.listdir(tmp_path)) == 2


def test_cli(tmp_path):
  synthetic_cli.main(
    [str(tmp_path / "cli"), "--num-subjects", "3", "--frames-per-subject", "5", "--image-size", "40", "--aus", "1,2,12"]
  )
  assert np.loadtxt(_list(str(tmp_path / "cli"), "BP4D_test_label_fold3.txt")).shape == (5, 3)
