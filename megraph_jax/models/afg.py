"""AFG: AU-specific Feature Generator (paper Sec. 2.1): N LinearBlocks applied as one batched op."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from megraph_jax.models.batchnorm import BatchNorm
from megraph_jax.models.layers import normal_init, uniform_init


class AFG(nnx.Module):
  """U_i = ReLU(BN_i(X W_i + b_i)) for every AU i at once; returns U ``[B, N, D, C]``.

  Equivalent to the official list of N ``LinearBlock``s (each with its own BatchNorm over
  channels, statistics over batch and tokens), computed with one einsum.
  """

  def __init__(
    self, channels: int, num_aus: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32
  ):
    self.num_aus = num_aus
    self.channels = channels
    self.dtype = dtype
    std = math.sqrt(2.0 / channels)
    self.kernel = nnx.Param(normal_init(std)(rngs.params(), (num_aus, channels, channels), param_dtype))
    self.bias = nnx.Param(uniform_init(1.0 / math.sqrt(channels))(rngs.params(), (num_aus, channels), param_dtype))
    self.bn = BatchNorm((num_aus, channels), axis=(1, 3), dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    # x: [B, D, C] -> U: [B, N, D, C]
    k = self.kernel[...].astype(self.dtype)
    u = jnp.einsum("bdc,nce->bnde", x.astype(self.dtype), k)
    u = u + self.bias[...].astype(self.dtype)[None, :, None, :]
    return jax.nn.relu(self.bn(u))
