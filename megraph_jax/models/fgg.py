"""FGG: Facial Graph Generator (paper Eq. 1): per-face kNN graph over node features and one GCN layer."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from megraph_jax.models.batchnorm import BatchNorm
from megraph_jax.models.layers import torch_linear
from megraph_jax.models.sc_head import l2_normalize
from megraph_jax.numerics import acc_dtype

METRICS = ("dots", "cosine", "l1", "l2")  # l1: sum |v_i - v_j|; l2: Euclidean distance (smaller = nearer)


def knn_adjacency(v: jax.Array, k: int, metric: str = "dots") -> jax.Array:
  """0/1 adjacency ``[B, N, N]``: a_ij = 1 if j is among the K most similar nodes to i (ties kept)."""
  v = jax.lax.stop_gradient(v.astype(acc_dtype(v.dtype)))  # similarity carries no gradient
  if metric == "dots":
    si = jnp.einsum("bic,bjc->bij", v, v)
  elif metric == "cosine":
    vn = l2_normalize(v)
    si = jnp.einsum("bic,bjc->bij", vn, vn)
  elif metric == "l1":
    si = -jnp.sum(jnp.abs(v[:, :, None, :] - v[:, None, :, :]), axis=-1)  # larger = closer
  elif metric == "l2":
    si = -jnp.sqrt(jnp.sum(jnp.square(v[:, :, None, :] - v[:, None, :, :]), axis=-1))  # larger = closer
  else:
    raise ValueError(f"unknown FGG metric '{metric}'; choose one of {METRICS}")
  if not 1 <= k <= v.shape[1]:
    raise ValueError(f"neighbor_num K={k} must lie in [1, N={v.shape[1]}]")
  threshold = jax.lax.top_k(si, k)[0][..., -1:]  # [B, N, 1], the K-th largest
  return (si >= threshold).astype(jnp.promote_types(si.dtype, jnp.float32))  # float64 models stay float64


def normalize_adjacency(adj: jax.Array) -> jax.Array:
  """D^-1/2 A D^-1/2 with D the row sums (out-degrees) of A, as the official ``normalize_digraph``."""
  d = jnp.sum(adj, axis=-1) ** -0.5  # [B, N]
  return d[:, :, None] * adj * d[:, None, :]


class FGG(nnx.Module):
  """v' = ReLU(v + BN(A_norm V(v) + U(v))) over the per-face kNN graph; BN normalises per node."""

  def __init__(
    self,
    channels: int,
    num_aus: int,
    *,
    neighbor_num: int = 4,
    metric: str = "dots",
    rngs: nnx.Rngs,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
  ):
    if metric not in METRICS:
      raise ValueError(f"unknown FGG metric '{metric}'; choose one of {METRICS}")
    self.neighbor_num = neighbor_num
    self.metric = metric
    std = math.sqrt(2.0 / channels)
    self.U = torch_linear(channels, channels, weight_std=std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.V = torch_linear(channels, channels, weight_std=std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.bnv = BatchNorm(num_aus, axis=1, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns the new node features ``[B, N, C]`` and the 0/1 adjacency ``[B, N, N]``."""
    adj = knn_adjacency(v, self.neighbor_num, self.metric)
    a = normalize_adjacency(adj).astype(v.dtype)
    agg = jnp.einsum("bij,bjc->bic", a, self.V(v))
    return jax.nn.relu(v + self.bnv(agg + self.U(v))), adj
