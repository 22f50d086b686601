"""Small shared layers: torch-initialised Linear, the official LinearBlock (Linear -> BN -> ReLU), DropPath."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from megraph_jax.models.batchnorm import BatchNorm
from megraph_jax.models.remat import remat_call
from megraph_jax.numerics import cpu_layouts


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


class FlatLinear(nnx.Linear):
  """``nnx.Linear`` run as one 2-D matmul over the flattened leading axes where ``numerics.cpu_layouts()``: the
  same function, but XLA:CPU computes the weight gradient of ``[B*L, C] x [C, D]`` 2-2.5x faster than of
  ``[B, L, C] x [C, D]`` (``benchmarks/layouts.py``). Elsewhere (GPU, TPU) plain ``nnx.Linear``."""

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim <= 2 or not cpu_layouts():
      return super().__call__(x)
    y = super().__call__(x.reshape(-1, x.shape[-1]))  # [prod(lead), D]
    return y.reshape(*x.shape[:-1], y.shape[-1])  # [..., D]


class PointwiseConv(nnx.Conv):
  """``nnx.Conv`` whose unpadded 1x1 case (ResNet's bottleneck and downsample convs) runs as a strided
  slice plus one 2-D matmul where ``numerics.cpu_layouts()``: the same function, but XLA:CPU's backward pass
  of a 1x1 convolution is 2-7x slower than a matmul's (``benchmarks/layouts.py``). Other kernels, and every
  kernel on GPU/TPU (XLA:GPU's Triton GEMM fusion aborts on the slice + reshape form), run as ``nnx.Conv``."""

  def _is_pointwise(self, x: jax.Array) -> bool:
    ones = (1,) * len(self.kernel_size)
    return (
      tuple(self.kernel_size) == ones
      and x.ndim == len(self.kernel_size) + 2
      and self.feature_group_count == 1
      and self.mask is None
      and self.padding in ("VALID", ((0, 0),) * len(ones), [(0, 0)] * len(ones))
      and self.input_dilation in (None, 1, ones)
      and self.kernel_dilation in (None, 1, ones)
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    if not self._is_pointwise(x) or not cpu_layouts():
      return super().__call__(x)
    strides = self.strides if isinstance(self.strides, (tuple, list)) else (self.strides or 1,) * 2
    x = x[:, :: strides[0], :: strides[1], :]  # [B, H', W', C]: the output grid of a 1x1 kernel
    kernel = self.kernel[...].reshape(self.in_features, self.out_features)
    bias = self.bias[...] if self.use_bias else None
    x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
    y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel, precision=self.precision)  # [B*H'*W', O]
    if bias is not None:
      y = y + bias
    return y.reshape(*x.shape[:-1], self.out_features)  # [B, H', W', O]


def torch_linear(
  in_features: int,
  out_features: int,
  *,
  rngs: nnx.Rngs,
  use_bias: bool = True,
  weight_std: float | None = None,
  kernel_init=None,
  dtype: Any = jnp.float32,
  param_dtype: Any = jnp.float32,
) -> nnx.Linear:
  """``nnx.Linear`` initialised as torch's ``nn.Linear`` (or with the official normal(0, std) weights)."""
  bound = 1.0 / math.sqrt(in_features)
  if kernel_init is None:
    kernel_init = normal_init(weight_std) if weight_std is not None else uniform_init(bound)
  return FlatLinear(
    in_features,
    out_features,
    use_bias=use_bias,
    kernel_init=kernel_init,
    bias_init=uniform_init(bound),
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=rngs,
  )


def apply_block(block: nnx.Module, x: jax.Array, remat: bool) -> jax.Array:
  """``block(x)``, rematerialised in the backward pass when ``remat`` (saves activation memory)."""
  if not remat:
    return block(x)
  return remat_call(block, x)


class LinearBlock(nnx.Module):
  """Linear -> BatchNorm over channels (statistics over batch and tokens) -> ReLU, on ``[B, D, C]``."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    rngs: nnx.Rngs,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
  ):
    self.fc = torch_linear(
      in_features,
      out_features,
      weight_std=math.sqrt(2.0 / out_features),
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )
    self.bn = BatchNorm(out_features, axis=-1, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.fc(x)))  # [B, D, C_in] -> [B, D, C_out]


class DropPath(nnx.Module):
  """Stochastic depth: zeroes whole samples with probability ``rate`` and rescales the rest."""

  def __init__(
    self,
    rate: float = 0.0,
    *,
    deterministic: bool = False,
    rng_collection: str = "dropout",
    rngs: nnx.Rngs | nnx.RngStream | None = None,
  ):
    if not 0.0 <= rate < 1.0:
      raise ValueError(f"DropPath rate must be in [0, 1), got {rate}")
    self.rate = float(rate)
    self.deterministic = deterministic
    self.rng_collection = rng_collection
    if isinstance(rngs, nnx.Rngs):
      self.rngs = rngs[rng_collection].fork() if self.rate > 0 else nnx.data(None)
    elif isinstance(rngs, nnx.RngStream):
      self.rngs = rngs.fork() if self.rate > 0 else nnx.data(None)
    else:
      self.rngs = nnx.data(None)

  def set_view(self, deterministic: bool | None = None):
    """Hook for ``nnx.view(model, deterministic=...)``."""
    if deterministic is not None:
      self.deterministic = deterministic

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None) -> jax.Array:
    if self.deterministic or self.rate == 0.0:
      return x
    rngs = rngs if rngs is not None else self.rngs
    if rngs is None:
      raise ValueError(
        "DropPath is in training mode with rate > 0 but has no rngs: build the model with "
        "nnx.Rngs(..., dropout=...) or call model.eval()"
      )
    if isinstance(rngs, nnx.Rngs):
      key = rngs[self.rng_collection]()
    elif isinstance(rngs, nnx.RngStream):
      key = rngs()
    else:
      key = rngs
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))  # [B, 1, ...]
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
