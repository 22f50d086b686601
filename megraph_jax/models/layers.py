"""Small shared layers: torch-initialised Linear and the official LinearBlock (Linear -> BN -> ReLU)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from megraph_jax.models.batchnorm import BatchNorm


def normal_init(std: float):
  """N(0, std^2) initialiser (the official ``weight.data.normal_(0, std)``)."""
  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.normal(key, shape, dtype)
  return init


def uniform_init(bound: float):
  """U(-bound, bound) initialiser (torch's default Linear weight and bias init)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def xavier_uniform_init():
  """Glorot uniform over the last two axes (torch ``nn.init.xavier_uniform_``; symmetric in fan-in/out)."""
  def init(key, shape, dtype=jnp.float32):
    fan_in, fan_out = shape[-2], shape[-1]
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def torch_linear(in_features: int, out_features: int, *, rngs: nnx.Rngs, use_bias: bool = True,
                 weight_std: float | None = None, kernel_init=None, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32) -> nnx.Linear:
  """``nnx.Linear`` initialised as torch's ``nn.Linear`` (or with the official normal(0, std) weights)."""
  bound = 1.0 / math.sqrt(in_features)
  if kernel_init is None:
    kernel_init = normal_init(weight_std) if weight_std is not None else uniform_init(bound)
  return nnx.Linear(in_features, out_features, use_bias=use_bias, kernel_init=kernel_init,
                    bias_init=uniform_init(bound), dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def apply_block(block: nnx.Module, x: jax.Array, remat: bool) -> jax.Array:
  """``block(x)``, rematerialised in the backward pass when ``remat`` (saves activation memory)."""
  if not remat:
    return block(x)
  return nnx.remat(lambda blk, h: blk(h))(block, x)


class LinearBlock(nnx.Module):
  """Linear -> BatchNorm over channels (statistics over batch and tokens) -> ReLU, on ``[B, D, C]``."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs,
               dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
    self.fc = torch_linear(in_features, out_features, weight_std=math.sqrt(2.0 / out_features),
                           dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.bn = BatchNorm(out_features, axis=-1, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.fc(x)))  # [B, D, C_in] -> [B, D, C_out]
