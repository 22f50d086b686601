"""GatedGCN: the residual gated graph convnet of the second stage (paper Sec. 2.2, Bresson & Laurent 2017)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from megraph_jax.models.batchnorm import BatchNorm
from megraph_jax.models.layers import torch_linear
from megraph_jax.numerics import acc_dtype


def edge_gates(edge: jax.Array, n: int) -> jax.Array:
  """g_ij = softmax_j(sigmoid(e_ij)) per channel: ``[B, N*N, C]`` -> ``[B, N, N, C]``, how much node j feeds node i."""
  b, _, c = edge.shape
  gate = jax.nn.sigmoid(edge.astype(acc_dtype(edge.dtype))).reshape(b, n, n, c)
  return jax.nn.softmax(gate, axis=2)  # normalised over neighbours j


class GatedGCNLayer(nnx.Module):
  """One residual gated layer on the complete directed AU graph with multi-dimensional edges.

  e_ij <- e_ij + ReLU(BN_E(A v_i + B v_j + E e_ij)),
  g_ij = softmax_j(sigmoid(e_ij)),
  v_i <- ReLU(v_i + BN_V(U v_i + (1/N) sum_j g_ij * V v_j)),
  with edges ordered p = i*N + j, BN_E per edge and BN_V per node (statistics over batch, channels).
  ``relu_in_residual=True`` is OpenGraphAU's node update v_i <- v_i + ReLU(BN_V(...)).
  """

  def __init__(
    self,
    channels: int,
    num_aus: int,
    *,
    relu_in_residual: bool = False,
    rngs: nnx.Rngs,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
  ):
    std = math.sqrt(2.0 / channels)
    kw = dict(use_bias=False, weight_std=std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.num_aus = num_aus
    self.relu_in_residual = relu_in_residual
    self.U = torch_linear(channels, channels, **kw)
    self.V = torch_linear(channels, channels, **kw)
    self.A = torch_linear(channels, channels, **kw)
    self.B = torch_linear(channels, channels, **kw)
    self.E = torch_linear(channels, channels, **kw)
    self.bnv = BatchNorm(num_aus, axis=1, dtype=dtype, param_dtype=param_dtype)
    self.bne = BatchNorm(num_aus * num_aus, axis=1, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x: jax.Array, edge: jax.Array) -> tuple[jax.Array, jax.Array]:
    # x: [B, N, C], edge: [B, N*N, C]
    b, n, c = x.shape
    ax, bx = self.A(x), self.B(x)
    msg = (ax[:, :, None, :] + bx[:, None, :, :]).reshape(b, n * n, c)  # A v_i + B v_j at p = i*N + j
    edge = edge + jax.nn.relu(self.bne(msg + self.E(edge)))  # [B, N*N, C]
    gate = edge_gates(edge, n).astype(x.dtype)  # [B, N, N, C]
    agg = jnp.einsum("bijc,bjc->bic", gate, self.V(x)) / n  # [B, N, C]
    h = self.bnv(self.U(x) + agg)
    x = x + jax.nn.relu(h) if self.relu_in_residual else jax.nn.relu(x + h)  # [B, N, C]
    return x, edge


class GatedGCN(nnx.Module):
  """Two GatedGCN layers, as the official second stage; returns node ``[B, N, C]`` and edge ``[B, N*N, C]``."""

  def __init__(
    self,
    channels: int,
    num_aus: int,
    *,
    num_layers: int = 2,
    relu_in_residual: bool = False,
    rngs: nnx.Rngs,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
  ):
    kw = dict(relu_in_residual=relu_in_residual, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.layers = nnx.List([GatedGCNLayer(channels, num_aus, **kw) for _ in range(num_layers)])

  def __call__(self, x: jax.Array, edge: jax.Array) -> tuple[jax.Array, jax.Array]:
    for layer in self.layers:
      x, edge = layer(x, edge)
    return x, edge
