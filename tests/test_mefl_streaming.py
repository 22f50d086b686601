"""Streaming MEFL == direct MEFL: outputs, running statistics and gradients, train and eval mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import forward

from megraph_jax.models.mefl import MEFL

B, N, D, C = 4, 5, 9, 16


def _pair(seed=0):
  direct = MEFL(C, N, streaming=False, rngs=nnx.Rngs(seed))
  stream = MEFL(C, N, streaming=True, rngs=nnx.Rngs(seed + 100))
  nnx.update(stream, nnx.state(direct))
  # Non-trivial running statistics (eval mode) and BatchNorm affine parameters.
  rng = np.random.default_rng(seed)
  for m in (direct, stream):
    m.bn.mean[...] = jnp.asarray(rng.normal(0, 0.3, N * N).astype("f4")) if m is direct else direct.bn.mean[...]
    m.bn.var[...] = jnp.asarray(rng.uniform(0.5, 1.5, N * N).astype("f4")) if m is direct else direct.bn.var[...]
    if m is direct:
      m.bn.scale[...] = jnp.asarray(1 + 0.3 * rng.normal(size=N * N).astype("f4"))
    else:
      m.bn.scale[...] = direct.bn.scale[...]
  return direct, stream


def _inputs(seed=1, offset=2.0):
  rng = np.random.default_rng(seed)
  u = rng.normal(size=(B, N, D, C)).astype("f4") + offset  # a large mean stresses the moment formulas
  x = rng.normal(size=(B, D, C)).astype("f4") + offset
  return jnp.asarray(u), jnp.asarray(x)


def _rel(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-12))


@pytest.mark.parametrize("train", [False, True])
def test_outputs_and_running_statistics_equal(train):
  direct, stream = _pair()
  u, x = _inputs()
  for m in (direct, stream):
    m.train() if train else m.eval()
  out_d, out_s = forward(direct, u, x), forward(stream, u, x)
  assert out_s.shape == (B, N * N, C)
  assert _rel(out_s, out_d) <= 1e-5, _rel(out_s, out_d)
  assert _rel(stream.bn.mean[...], direct.bn.mean[...]) <= 1e-5
  assert _rel(stream.bn.var[...], direct.bn.var[...]) <= 1e-5


@pytest.mark.parametrize("train", [False, True])
def test_gradients_equal(train):
  direct, stream = _pair(3)
  u, x = _inputs(4)
  w = jnp.asarray(np.random.default_rng(5).normal(size=(B, N * N, C)).astype("f4"))

  def loss(model, u, x):
    return jnp.sum(model(u, x) * w)

  grads = []
  for m in (direct, stream):
    m.train() if train else m.eval()
    g_params, g_u, g_x = nnx.jit(nnx.grad(loss, argnums=(0, 1, 2)))(m, u, x)
    grads.append((g_params, g_u, g_x))
  (gp_d, gu_d, gx_d), (gp_s, gu_s, gx_s) = grads
  assert _rel(gu_s, gu_d) <= 1e-5 and _rel(gx_s, gx_d) <= 1e-5
  flat_d = dict(nnx.to_flat_state(nnx.state(gp_d, nnx.Param)))
  flat_s = dict(nnx.to_flat_state(nnx.state(gp_s, nnx.Param)))
  assert flat_d.keys() == flat_s.keys()
  # The key biases of FAM and ARM have exactly-zero gradients (softmax ignores the constant q.b_k):
  # there both sides must be ~0 relative to the largest gradient; elsewhere <= 1e-5 relative.
  scale = max(float(np.abs(np.asarray(v[...])).max()) for v in flat_d.values())
  zero = 0
  for path in flat_d:
    ref, got = np.asarray(flat_d[path][...]), np.asarray(flat_s[path][...])
    if np.abs(ref).max() <= 1e-5 * scale:
      zero += 1
      assert np.abs(got).max() <= 1e-5 * scale, path
    else:
      rel = np.abs(got - ref).max() / np.abs(ref).max()
      assert rel <= 1e-5, (path, rel)
  assert zero <= 2


def test_streaming_never_builds_a_pair_by_token_by_channel_tensor():
  """No intermediate of the jitted streaming forward has N*N*D*C elements per example."""
  _, stream = _pair()
  u, x = _inputs()
  stream.train()
  graphdef, state = nnx.split(stream)
  jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(u, x))(state)
  sizes = [int(np.prod(v.aval.shape)) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars]
  assert max(sizes) < B * N * N * D * C, max(sizes)
