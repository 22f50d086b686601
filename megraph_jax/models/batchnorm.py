"""BatchNorm with PyTorch's semantics on any feature axis (BatchNorm1d/2d as the official model uses them)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from megraph_jax.numerics import acc_dtype


class BatchNorm(nnx.Module):
  """Batch normalisation over every axis but ``axis``, as ``torch.nn.BatchNorm{1,2}d``.

  Differences from ``nnx.BatchNorm`` that matter for parity with the official model:
  the running variance is updated with the *unbiased* batch variance, ``momentum`` is
  PyTorch's (weight of the new batch, 0.1), and statistics are float32 (float64 when the parameters are float64).
  The official model normalises over unusual axes (nodes of ``[B, N, C]``, pairs of
  ``[B, N*N, D, C]``), hence the explicit ``axis``; a tuple of axes keeps one statistic per
  feature *cell* (the batched AFG keeps one per AU and channel, ``axis=(1, 3)``).
  """

  def __init__(
    self,
    num_features: int | tuple[int, ...],
    *,
    axis: int | tuple[int, ...] = -1,
    momentum: float = 0.1,
    epsilon: float = 1e-5,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_running_average: bool = False,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs  # Deterministic initialisation (weight 1, bias 0), as the official bn_init.
    shape = (num_features,) if isinstance(num_features, int) else tuple(num_features)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if len(shape) != len(axes):
      raise ValueError(f"BatchNorm: num_features {shape} and axis {axes} differ in length")
    self.num_features = shape
    self.axis = axes
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.use_running_average = use_running_average
    self.scale = nnx.Param(jnp.ones(shape, param_dtype))
    self.bias = nnx.Param(jnp.zeros(shape, param_dtype))
    self.stat_dtype = acc_dtype(param_dtype)
    self.mean = nnx.BatchStat(jnp.zeros(shape, self.stat_dtype))
    self.var = nnx.BatchStat(jnp.ones(shape, self.stat_dtype))

  def _bshape(self, ndim: int) -> tuple[tuple[int, ...], list[int]]:
    axes = tuple(a % ndim for a in self.axis)
    bshape = [1] * ndim
    for a, n in zip(axes, self.num_features):
      bshape[a] = n
    return axes, bshape

  def set_view(self, use_running_average: bool | None = None):
    """Hook for ``nnx.view(model, use_running_average=...)`` (the eval view of a training model)."""
    if use_running_average is not None:
      self.use_running_average = use_running_average

  def update_running_stats(self, mean: jax.Array, var: jax.Array, count: int) -> None:
    """Moves the running averages towards batch moments (``var`` biased; stored unbiased, as torch)."""
    unbiased = var * (count / max(count - 1, 1))
    m = self.momentum
    self.mean[...] = (1.0 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
    self.var[...] = (1.0 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased)

  def normalize(self, x: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
    """(x - mean) / sqrt(var + eps) * scale + bias with per-feature moments of shape ``num_features``."""
    _, bshape = self._bshape(x.ndim)
    f = self.stat_dtype
    inv = jax.lax.rsqrt(var + self.epsilon) * self.scale[...].astype(f)
    y = (x.astype(f) - mean.reshape(bshape)) * inv.reshape(bshape)
    return (y + self.bias[...].astype(f).reshape(bshape)).astype(self.dtype or x.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    axes, _ = self._bshape(x.ndim)
    if tuple(x.shape[a] for a in axes) != self.num_features:
      raise ValueError(f"BatchNorm expects {self.num_features} features on axes {self.axis}, got shape {x.shape}")
    if self.use_running_average:
      return self.normalize(x, self.mean[...], self.var[...])
    reduce_axes = tuple(a for a in range(x.ndim) if a not in axes)
    _, bshape = self._bshape(x.ndim)
    xf = x.astype(self.stat_dtype)
    mean = jnp.mean(xf, axis=reduce_axes)
    var = jnp.mean(jnp.square(xf - mean.reshape(bshape)), axis=reduce_axes)
    count = 1
    for a in reduce_axes:
      count *= x.shape[a]
    self.update_running_stats(mean, var, count)
    return self.normalize(x, mean, var)
