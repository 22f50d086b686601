"""MEFL: multi-dimensional edge feature learning (paper Eqs. 3-5): FAM and ARM cross-attention."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from megraph_jax.models.batchnorm import BatchNorm
from megraph_jax.models.layers import torch_linear


class CrossAttention(nnx.Module):
  """softmax(A W_q (B W_k)^T / sqrt(d_k)) B W_v (Eq. 4), with d_k = C/2; holds FAM's or ARM's weights."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32):
    half = channels // 2
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.linear_q = torch_linear(channels, half, weight_std=math.sqrt(2.0 / half), **kw)
    self.linear_k = torch_linear(channels, half, weight_std=math.sqrt(2.0 / half), **kw)
    self.linear_v = torch_linear(channels, channels, weight_std=math.sqrt(2.0 / channels), **kw)
    self.scale = half ** -0.5

  def attend(self, q: jax.Array, k: jax.Array, spec: str) -> jax.Array:
    """Scaled dot-product attention weights in float32; ``spec`` is the einsum of q and k."""
    logits = jnp.einsum(spec, q, k, preferred_element_type=jnp.float32) * self.scale
    return jax.nn.softmax(logits, axis=-1)


class MEFL(nnx.Module):
  """Edge features e_ij for every ordered AU pair, edge p = i*N + j (Eqs. 3-5); returns ``[B, N*N, C]``.

  FAM: F_i = FAM(U_i, X) (query U_i, key/value X). ARM: for pair (i, j) the query is F_j and the
  key/value F_i; then a linear edge projection, BatchNorm over pairs (statistics over batch,
  tokens and channels) and the mean over tokens (GAP). Query/key/value projections are computed
  once per node and broadcast over pairs; no loop over pairs.

  ``streaming=True`` (default) computes the same function without any ``[B, N*N, D, C]`` tensor
  (see :meth:`_streaming`); ``streaming=False`` is the direct form, kept as the reference.
  """

  def __init__(self, channels: int, num_aus: int, *, streaming: bool = True, rngs: nnx.Rngs,
               dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
    self.num_aus = num_aus
    self.streaming = streaming
    self.dtype = dtype
    self.FAM = CrossAttention(channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.ARM = CrossAttention(channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.edge_proj = torch_linear(channels, channels, weight_std=math.sqrt(2.0 / channels),
                                  dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.bn = BatchNorm(num_aus * num_aus, axis=1, dtype=dtype, param_dtype=param_dtype)

  def fam(self, u: jax.Array, x: jax.Array) -> jax.Array:
    """F = FAM(U, X): ``[B, N, D, C]`` from U ``[B, N, D, C]`` and X ``[B, D, C]``."""
    q = self.FAM.linear_q(u)  # [B, N, D, C/2]
    k = self.FAM.linear_k(x)  # [B, D, C/2]  (X is shared by all AUs: projected once)
    v = self.FAM.linear_v(x)  # [B, D, C]
    a = self.FAM.attend(q, k, "bnqh,bkh->bnqk").astype(v.dtype)  # [B, N, D, D]
    return jnp.einsum("bnqk,bkc->bnqc", a, v)  # [B, N, D, C]

  def arm(self, f: jax.Array) -> jax.Array:
    """ARM over all ordered pairs: ``[B, N, N, D, C]`` with [b, i, j] = ARM(F_j, F_i)."""
    q = self.ARM.linear_q(f)  # [B, N, D, C/2], per node
    k = self.ARM.linear_k(f)  # [B, N, D, C/2]
    v = self.ARM.linear_v(f)  # [B, N, D, C]
    a = self.ARM.attend(q, k, "bjqh,bikh->bijqk").astype(v.dtype)  # [B, N(i), N(j), D, D]
    return jnp.einsum("bijqk,bikc->bijqc", a, v)  # [B, N, N, D, C]

  def _direct(self, f: jax.Array) -> jax.Array:
    """Reference form: materialises ARM's output and the edge projection for every pair."""
    b, n, d, c = f.shape
    y = self.edge_proj(self.arm(f)).reshape(b, n * n, d, c)  # [B, N*N, D, C]
    y = self.bn(y)
    return jnp.mean(y, axis=2)  # [B, N*N, C]

  def _folded_value(self, f: jax.Array) -> jax.Array:
    """V'_i = F_i W_v W_e + (b_v W_e + b_e): ARM's value with the edge projection folded in ``[B, N, D, C]``."""
    we = self.edge_proj.kernel[...].astype(jnp.float32)
    w = self.ARM.linear_v.kernel[...].astype(jnp.float32) @ we  # [C, C]
    bias = self.ARM.linear_v.bias[...].astype(jnp.float32) @ we + self.edge_proj.bias[...].astype(jnp.float32)
    return jnp.einsum("bndc,ce->bnde", f, w.astype(f.dtype),
                      preferred_element_type=jnp.float32) + bias

  def _streaming(self, f: jax.Array) -> jax.Array:
    """Exact edge features without the ``[B, N*N, D, C]`` tensor.

    With z = A V'_i the projected ARM output of pair (i, j) (A its D x D attention; rows sum to
    one, so the edge projection folds into V'), the edge feature is BN(z) averaged over tokens.
    BatchNorm per pair is affine given its moments, so it commutes with the token mean:
    mean_d z = (mean_d A) V'_i. The training moments over (batch, tokens, channels) are
    sum z = (1^T A)(V'_i 1) and sum z^2 = sum (A^T A) * (V'_i V'_i^T), computed with V'_i
    shifted by its mean (z - c = A (V' - c)) to avoid cancellation.
    """
    b, n, d, c = f.shape
    q = self.ARM.linear_q(f)  # [B, N, D, C/2]
    k = self.ARM.linear_k(f)  # [B, N, D, C/2]
    a = self.ARM.attend(q, k, "bjqh,bikh->bijqk")  # [B, N(i), N(j), D, D] float32
    vp = self._folded_value(f)  # [B, N, D, C] float32
    zbar = jnp.einsum("bijk,bikc->bijc", jnp.mean(a, axis=3), vp).reshape(b, n * n, c)  # mean_d z
    if self.bn.use_running_average:
      return self.bn.normalize(zbar, self.bn.mean[...], self.bn.var[...])
    shift = jax.lax.stop_gradient(jnp.mean(vp, axis=(0, 2, 3)))  # [N], one per key/value node i
    vc = vp - shift[None, :, None, None]
    s1 = jnp.einsum("bijk,bik->ij", jnp.sum(a, axis=3), jnp.sum(vc, axis=3))  # sum over (b, d, c)
    gram = jnp.einsum("bikc,bilc->bikl", vc, vc)  # [B, N, D, D]
    s2 = jnp.sum(jnp.einsum("bijqk,bikl->bijql", a, gram) * a, axis=(0, 3, 4))  # [N, N]
    count = b * d * c
    mean_c = s1 / count
    var = jnp.maximum(s2 / count - jnp.square(mean_c), 0.0).reshape(n * n)
    mean = (mean_c + shift[:, None]).reshape(n * n)
    self.bn.update_running_stats(mean, var, count)
    return self.bn.normalize(zbar, mean, var)

  def __call__(self, u: jax.Array, x: jax.Array) -> jax.Array:
    f = self.fam(u, x)  # [B, N, D, C]
    out = self._streaming(f) if self.streaming else self._direct(f)
    return out.astype(self.dtype)  # [B, N*N, C]
