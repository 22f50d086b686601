"""SC head (paper Eq. 2): cosine similarity between each node feature and its learned AU vector."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from megraph_jax.models.layers import xavier_uniform_init
from megraph_jax.numerics import acc_dtype


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||_2, eps) over the last axis (torch ``F.normalize``)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


class SCHead(nnx.Module):
  """p_i = <v_i/|v_i|, ReLU(s_i)/|ReLU(s_i)|>: AU occurrence probabilities ``[B, N]`` (Eq. 2)."""

  def __init__(self, channels: int, num_aus: int, *, rngs: nnx.Rngs, param_dtype: Any = jnp.float32):
    self.sc = nnx.Param(xavier_uniform_init()(rngs.params(), (num_aus, channels), param_dtype))

  def __call__(self, v: jax.Array) -> jax.Array:
    # v: [B, N, C] (already non-negative: both graph stages end with a ReLU) -> [B, N]
    f = acc_dtype(v.dtype, self.sc.dtype)
    s = l2_normalize(jax.nn.relu(self.sc[...].astype(f)))
    v = l2_normalize(v.astype(f))
    return jnp.sum(v * s[None], axis=-1)
