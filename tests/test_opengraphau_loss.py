"""OpenGraphAU's loss: label -1 = "not annotated", against the official WeightedAsymmetricLoss (golden) and by hand."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megraph_jax import losses

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden_opengraphau.npz")


@pytest.fixture(scope="module")
def golden():
  with np.load(GOLDEN) as z:
    return {k: z[k] for k in z.files if k.startswith("loss/")}


def test_matches_the_official_loss(golden):
  p, y, w = (jnp.asarray(golden[f"loss/{k}"], jnp.float32) for k in ("probs", "labels", "weights"))
  assert (golden["loss/labels"] == -1).any()
  np.testing.assert_allclose(losses.opengraphau_wa_loss(p, y, w), golden["loss/weighted"], rtol=1e-6)
  np.testing.assert_allclose(losses.opengraphau_wa_loss(p, y), golden["loss/unweighted"], rtol=1e-6)


def test_by_hand_and_padding():
  """Two examples, three AUs, two entries not annotated: the mean over the 4 annotated entries only."""
  p = jnp.array([[0.8, 0.3, 0.6], [0.2, 0.9, 0.5]])
  y = jnp.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
  w = jnp.array([2.0, 1.0, 0.5])
  terms = [2.0 * np.log(0.8), 0.5 * 0.6 * np.log(0.4), 2.0 * 0.2 * np.log(0.8), 1.0 * np.log(0.9)]
  assert float(losses.opengraphau_wa_loss(p, y, w)) == pytest.approx(-sum(terms) / 4, rel=1e-6)
  # a padded third row (mask 0) changes nothing; an all -1 batch gives 0, not NaN
  pp, yy = jnp.concatenate([p, p[:1]]), jnp.concatenate([y, y[:1]])
  got = losses.opengraphau_wa_loss(pp, yy, w, mask=jnp.array([1, 1, 0]))
  assert float(got) == pytest.approx(-sum(terms) / 4, rel=1e-6)
  assert float(losses.opengraphau_wa_loss(p, -jnp.ones_like(y))) == 0.0
  # not-annotated entries get no gradient, and the focusing weight p of the negative term carries none
  g = jax.grad(lambda q: losses.opengraphau_wa_loss(q, y, w))(p)
  assert float(g[0, 1]) == 0.0 and float(g[1, 2]) == 0.0
  assert float(g[0, 2]) == pytest.approx(-(-0.5 * 0.6 / 0.4) / 4, rel=1e-5)
