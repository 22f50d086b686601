"""F1 and accuracy against scikit-learn on the same predictions, accumulated over batches."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from megraph_jax.metrics import AUMetrics, confusion_counts


def test_matches_sklearn_over_batches():
  rng = np.random.default_rng(0)
  n = 7
  probs = rng.random((203, n)).astype("f4")
  labels = (rng.random((203, n)) < np.linspace(0.05, 0.7, n)).astype("f4")
  probs[:, -1] = 0.1  # an AU never predicted: F1 0 (sklearn's zero_division=0)
  m = AUMetrics(tuple(f"AU{i}" for i in range(n)))
  for s in range(0, 203, 50):  # uneven batches
    m.update_from_predictions(probs[s : s + 50], labels[s : s + 50])
  got = m.compute()
  pred = probs >= 0.5
  for j in range(n):
    assert got["f1"][f"AU{j}"] == pytest.approx(f1_score(labels[:, j], pred[:, j], zero_division=0), abs=1e-12)
    assert got["accuracy"][f"AU{j}"] == pytest.approx(accuracy_score(labels[:, j], pred[:, j]), abs=1e-12)
  assert got["mean_f1"] == pytest.approx(
    np.mean([f1_score(labels[:, j], pred[:, j], zero_division=0) for j in range(n)])
  )
  assert got["num_examples"] == 203


def test_unlabelled_entries_are_not_counted():
  """Label 9 (BP4D "not coded") entries are left out: F1/accuracy equal sklearn on the labelled entries."""
  rng = np.random.default_rng(1)
  probs = rng.random((60, 3)).astype("f4")
  labels = (rng.random((60, 3)) < 0.4).astype("f4")
  labels[rng.random((60, 3)) < 0.2] = 9
  got = AUMetrics(("a", "b", "c")).update_from_predictions(probs, labels).compute()
  for j, name in enumerate("abc"):
    keep = labels[:, j] != 9
    assert got["f1"][name] == pytest.approx(f1_score(labels[keep, j], probs[keep, j] >= 0.5), abs=1e-12)
    assert got["accuracy"][name] == pytest.approx(accuracy_score(labels[keep, j], probs[keep, j] >= 0.5), abs=1e-12)
    assert got["num_labelled"][name] == keep.sum()
  assert got["num_examples"] == 60  # every example, not only those with AU "a" coded


def test_mask_excludes_padding_and_threshold_is_inclusive():
  probs = np.array([[0.5, 0.2], [0.9, 0.9], [0.1, 0.7]], "f4")
  labels = np.array([[1, 0], [0, 1], [1, 1]], "f4")
  counts = np.asarray(confusion_counts(probs, labels, mask=np.array([1, 1, 0], "f4")))
  # AU0: p>=.5 -> [1, 1], y [1, 0] -> TP 1, FP 1. AU1: pred [0, 1], y [0, 1] -> TN 1, TP 1.
  np.testing.assert_array_equal(counts, [[1, 1, 0, 0], [1, 0, 1, 0]])


def test_compute_before_update_is_an_error():
  with pytest.raises(ValueError, match="before any update"):
    AUMetrics(("AU1",)).compute()
