"""Backbone rematerialisation: same gradients, state updates and random numbers; less compiled memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from megraph_jax.models.megraph import Stage1Model
from megraph_jax.models.resnet import resnet
from megraph_jax.models.swin import SwinTransformer


def _images(b: int, size: int, seed: int = 0) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, size, size, 3)).astype(np.float32))


def _grads_and_state(model: nnx.Module, loss, remat: bool):
  model.set_attributes(remat=remat, raise_if_not_found=False)
  model.train()
  grads = nnx.jit(nnx.grad(loss))(model)  # jitted, as training runs it (op by op: hundreds of op compiles)
  return (
    dict(nnx.to_flat_state(nnx.state(grads, nnx.Param))),
    dict(nnx.to_flat_state(nnx.state(model, nnx.Not(nnx.Param)))),
  )


def _assert_same(a: dict, b: dict, rtol: float = 1e-5, atol: float = 1e-6) -> None:
  """Equal to float32 noise: the two programs differ (remat recomputes), so sums may round apart by ~1e-7 of a
  leaf's largest value (``atol`` is relative to it); RNG keys and counters exactly."""
  assert a.keys() == b.keys()
  for path, v in a.items():
    x, y = b[path][...], v[...]
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    x, y = np.asarray(x), np.asarray(y)
    if not np.issubdtype(y.dtype, np.floating):
      np.testing.assert_array_equal(x, y, err_msg=str(path))
      continue
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol * float(np.abs(y).max(initial=0.0)), err_msg=str(path))


def test_resnet_remat_same_gradients_and_batch_statistics():
  x = _images(2, 64)
  out = {}
  for remat in (False, True):
    m = Stage1Model("resnet18", 3, neighbor_num=2, rngs=nnx.Rngs(0))
    out[remat] = _grads_and_state(m, lambda m: jnp.sum(m(x)["au_probs"] ** 2), remat)
  _assert_same(out[False][0], out[True][0])
  _assert_same(out[False][1], out[True][1])  # running mean/var updated once, identically
  m = Stage1Model("resnet18", 3, neighbor_num=2, rngs=nnx.Rngs(0))
  before = dict(nnx.to_flat_state(nnx.state(m, nnx.BatchStat)))
  changed = [p for p, v in out[True][1].items() if p in before and not np.allclose(v[...], before[p][...])]
  assert changed, "training mode must update the running statistics"


def test_swin_remat_same_gradients_and_drop_path_draws():
  x = _images(2, 96, seed=1)
  out = {}
  for remat in (False, True):
    m = SwinTransformer(
      img_size=96,
      window_size=6,
      patch_size=4,
      embed_dim=16,
      depths=(2, 2),
      num_heads=(1, 2),
      drop_path_rate=0.5,
      rngs=nnx.Rngs(0, dropout=3),
    )
    out[remat] = _grads_and_state(m, lambda m: jnp.sum(jnp.tanh(m(x))), remat)
  _assert_same(out[False][0], out[True][0])
  _assert_same(out[False][1], out[True][1])  # RNG counters advanced by one draw per block, as without remat
  # The recomputation must replay the same drop-path masks: a different mask would change gradients.
  m = SwinTransformer(
    img_size=96,
    window_size=6,
    patch_size=4,
    embed_dim=16,
    depths=(2, 2),
    num_heads=(1, 2),
    drop_path_rate=0.5,
    rngs=nnx.Rngs(0, dropout=4),
  )
  other = _grads_and_state(m, lambda m: jnp.sum(jnp.tanh(m(x))), True)[0]
  assert any(not np.allclose(other[p][...], v[...]) for p, v in out[True][0].items())


def _temp_bytes(remat: bool) -> int:
  model = nnx.eval_shape(lambda: resnet("resnet50", rngs=nnx.Rngs(0)))
  model.set_attributes(remat=remat, raise_if_not_found=False)
  model.train()
  graphdef, state = nnx.split(model)

  def grad(state, x):
    return nnx.grad(lambda m: jnp.sum(m(x)))(nnx.merge(graphdef, state))

  x = jax.ShapeDtypeStruct((8, 128, 128, 3), jnp.float32)
  return jax.jit(grad).lower(state, x).compile().memory_analysis().temp_size_in_bytes


def test_remat_lowers_compiled_activation_memory():
  plain, remat = _temp_bytes(False), _temp_bytes(True)
  print(f"ResNet-50 grad temporaries, batch 8 at 128 px: {plain / 2**20:.0f} MiB plain, {remat / 2**20:.0f} MiB remat")
  assert remat < 0.6 * plain, (plain, remat)
