"""Losses against hand computation and PyTorch; the focusing weight's gradient is stopped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megraph_jax import losses, task


def _wa_by_hand(p, y, w, eps=1e-8):
  """Eq. 6 written out element by element in float64."""
  b, n = p.shape
  total = 0.0
  for i in range(b):
    row = 0.0
    for j in range(n):
      pos = y[i, j] * np.log(max(p[i, j], eps))
      neg = (1 - y[i, j]) * p[i, j] * np.log(max(1 - p[i, j], eps))
      row += w[j] * (pos + neg)
    total += row / n
  return -total / b


def test_weighted_asymmetric_loss_matches_hand_computation():
  rng = np.random.default_rng(0)
  p = rng.random((5, 6)).astype("f4")
  p[0, 0], p[1, 1] = 0.0, 1.0  # exercise the eps clamp on both terms
  y = (rng.random((5, 6)) > 0.5).astype("f4")
  y[0, 0], y[1, 1] = 1.0, 0.0
  w = rng.random(6).astype("f4") + 0.5
  got = float(losses.weighted_asymmetric_loss(jnp.asarray(p), jnp.asarray(y), jnp.asarray(w)))
  np.testing.assert_allclose(got, _wa_by_hand(p.astype("f8"), y, w), rtol=1e-5)


def test_focusing_weight_gradient_is_stopped():
  """d/dp of (1-y) * sg(p) * log(1-p) is -p/(1-p); without the stop it would add log(1-p)."""
  p = jnp.array([[0.3, 0.6]])
  y = jnp.array([[0.0, 0.0]])
  g = jax.grad(lambda q: losses.weighted_asymmetric_loss(q, y))(p)
  want = p / (1 - p) / 2  # two minus signs (the loss and d log(1-p)/dp) of the loss, mean over 2 AUs
  np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-6)
  wrong = -(-(p / (1 - p)) + jnp.log(1 - p)) / 2
  assert not np.allclose(np.asarray(g), np.asarray(wrong), rtol=1e-3)


def test_loss_and_gradient_match_pytorch_transcription():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  p = rng.random((4, 5)).astype("f4")
  y = (rng.random((4, 5)) > 0.6).astype("f4")
  w = rng.random(5).astype("f4") + 0.5
  tp = torch.tensor(p, requires_grad=True)
  ty, tw = torch.tensor(y), torch.tensor(w)
  # The official semantics, transcribed: clamp(min=eps), focusing weight computed without grad.
  lp = ty * torch.log(tp.clamp(min=1e-8))
  ln = (1 - ty) * torch.log((1 - tp).clamp(min=1e-8))
  with torch.no_grad():
    focus = 1 - (1 - tp)
  ref = -((lp + focus * ln) * tw.view(1, -1)).mean(dim=-1).mean()
  ref.backward()
  val, grad = jax.value_and_grad(losses.weighted_asymmetric_loss)(jnp.asarray(p), jnp.asarray(y), jnp.asarray(w))
  np.testing.assert_allclose(float(val), ref.item(), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), tp.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_mask_drops_padded_rows():
  rng = np.random.default_rng(2)
  p, y = rng.random((6, 3)), (rng.random((6, 3)) > 0.5).astype("f4")
  mask = np.array([1, 1, 1, 1, 0, 0], "f4")
  full = losses.weighted_asymmetric_loss(jnp.asarray(p[:4]), jnp.asarray(y[:4]))
  masked = losses.weighted_asymmetric_loss(jnp.asarray(p), jnp.asarray(y), mask=jnp.asarray(mask))
  np.testing.assert_allclose(float(full), float(masked), rtol=1e-6)


def test_relation_labels_follow_the_official_order():
  y = np.array([[1, 0, 1], [0, 1, 1]])
  rel = np.asarray(task.relation_labels(jnp.asarray(y)))
  n = 3
  for b in range(2):
    for i in range(n):
      for j in range(n):
        assert rel[b, i * n + j] == 2 * y[b, i] + y[b, j]


def test_edge_loss_matches_pytorch_cross_entropy():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(3, 16, 4)).astype("f4")
  rel = rng.integers(0, 4, size=(3, 16))
  ref = torch.nn.CrossEntropyLoss()(torch.tensor(logits).view(-1, 4), torch.tensor(rel).view(-1)).item()
  got = float(losses.edge_loss(jnp.asarray(logits), jnp.asarray(rel)))
  np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_unlabelled_entries_are_left_out_of_both_losses():
  """An entry labelled 9 adds nothing to L_WA; pairs with it add nothing to L_E (reference: drop them by hand)."""
  rng = np.random.default_rng(5)
  p = rng.uniform(0.05, 0.95, (4, 3)).astype("f4")
  y = (rng.random((4, 3)) > 0.5).astype("f4")
  w = np.array([0.5, 1.0, 1.5], "f4")
  y9 = y.copy()
  y9[1, 2] = y9[3, 0] = 9
  known = y9 != 9
  ref = 0.0
  for i in range(4):
    for j in range(3):
      if known[i, j]:
        ref += w[j] * (y[i, j] * np.log(p[i, j]) + (1 - y[i, j]) * p[i, j] * np.log(1 - p[i, j])) / 3
  got = float(losses.weighted_asymmetric_loss(jnp.asarray(p), jnp.asarray(y9), jnp.asarray(w)))
  np.testing.assert_allclose(got, -ref / 4, rtol=1e-5)
  rel = np.asarray(task.relation_labels(jnp.asarray(y9))).reshape(4, 3, 3)
  assert rel[1, 2].tolist() == [-1, -1, -1] and rel[1, :, 2].tolist() == [-1, -1, -1] and rel[1, 0, 1] >= 0
  logits = rng.normal(size=(4, 9, 4)).astype("f4")
  flat = rel.reshape(4, 9)
  logz = np.log(np.exp(logits.astype("f8")).sum(-1))
  ces = [logz[b, k] - logits[b, k, flat[b, k]] for b in range(4) for k in range(9) if flat[b, k] >= 0]
  np.testing.assert_allclose(float(losses.edge_loss(jnp.asarray(logits), jnp.asarray(flat))), np.mean(ces), rtol=1e-5)
  cw = task.class_weights(np.array([[1, 0], [0, 9], [1, 1], [9, 0]]))
  rate = np.array([2 / 3, 1 / 3])  # label 1 among the labelled rows only
  np.testing.assert_allclose(cw, (1 / rate) / (1 / rate).sum() * 2, rtol=1e-6)


def test_total_loss():
  assert float(losses.total_loss(jnp.float32(1.5), jnp.float32(2.0), 0.05)) == pytest.approx(1.6)
  assert float(losses.total_loss(jnp.float32(1.5), None, 0.05)) == pytest.approx(1.5)


def test_class_weights_as_the_official_tool():
  labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]])
  rate = np.array([3 / 4, 1 / 4, 1 / 4])
  w = 1 / rate
  np.testing.assert_allclose(task.class_weights(labels), w / w.sum() * 3, rtol=1e-6)
  assert task.class_weights(labels).sum() == pytest.approx(3.0)  # sums to N, not 1
  with pytest.raises(ValueError, match=r"\[1\]"):
    task.class_weights(np.array([[1, 0], [1, 0]]))


def test_weighted_bce_matches_pytorch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(4)
  p = rng.uniform(0.01, 0.99, (4, 5)).astype("f4")
  y = (rng.random((4, 5)) > 0.5).astype("f4")
  w = rng.random(5).astype("f4") + 0.5
  ref = torch.nn.functional.binary_cross_entropy(
    torch.tensor(p), torch.tensor(y), weight=torch.tensor(w).expand(4, 5)
  ).item()
  got = float(losses.weighted_bce_loss(jnp.asarray(p), jnp.asarray(y), jnp.asarray(w)))
  np.testing.assert_allclose(got, ref, rtol=1e-5)
