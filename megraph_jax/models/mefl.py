"""MEFL: multi-dimensional edge feature learning (paper Eqs. 3-5): FAM and ARM cross-attention."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from megraph_jax.models.batchnorm import BatchNorm
from megraph_jax.models.layers import torch_linear
from megraph_jax.numerics import acc_dtype


class CrossAttention(nnx.Module):
  """softmax(A W_q (B W_k)^T / sqrt(d_k)) B W_v (Eq. 4), with d_k = C/2; holds FAM's or ARM's weights."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
    half = channels // 2
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.linear_q = torch_linear(channels, half, weight_std=math.sqrt(2.0 / half), **kw)
    self.linear_k = torch_linear(channels, half, weight_std=math.sqrt(2.0 / half), **kw)
    self.linear_v = torch_linear(channels, channels, weight_std=math.sqrt(2.0 / channels), **kw)
    self.scale = half**-0.5

  def attend(self, q: jax.Array, k: jax.Array, spec: str) -> jax.Array:
    """Scaled dot-product attention weights in float32; ``spec`` is the einsum of q and k."""
    logits = jnp.einsum(spec, q, k, preferred_element_type=acc_dtype(q.dtype, k.dtype)) * self.scale
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

  def __init__(
    self,
    channels: int,
    num_aus: int,
    *,
    streaming: bool = True,
    rngs: nnx.Rngs,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
  ):
    self.num_aus = num_aus
    self.streaming = streaming
    self.dtype = dtype
    self.FAM = CrossAttention(channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.ARM = CrossAttention(channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.edge_proj = torch_linear(
      channels, channels, weight_std=math.sqrt(2.0 / channels), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )
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

  def _streaming(self, u: jax.Array, x: jax.Array) -> jax.Array:
    """The same edge features with no ``[B, N*N, D, C]`` (or even ``[B, N, D, C]`` ARM) tensor.

    Exact algebra, no approximation (attention rows sum to one; softmax ignores terms constant
    along the key axis):
    - FAM: logits_i = (U_i W_q + b_q)(X W_k + b_k)^T = U_i P^T + 1 (K b_q)^T with P = K W_q^T, and
      F_i = A_i V with V = X W_v + b_v shared by all AUs.
    - ARM on F: q_j = A_j Q + b_q, k_i = A_i K + b_k with Q = V W_q, K = V W_k, so
      logits_ij = A_j (Q K^T) A_i^T + 1 (A_i K b_q)^T (+ terms constant along keys).
    - The edge projection folds into ARM's value: V'_i = F_i W_v W_e + b' = A_i Y + b', Y = V W_v W_e.
    - BatchNorm per pair is affine given its moments, so it commutes with the token mean:
      mean_d z_ij = (abar_ij A_i) Y + b' with abar_ij the token-mean of pair (i, j)'s attention.
    - Training moments over (batch, tokens, channels) of z_ij = a_ij V'_i use
      sum z = (1^T a)(V'_i 1) and sum z^2 = sum (a^T a) * (V'_i V'_i^T), with
      V'_i V'_i^T = A_i (Y Y^T) A_i^T + rank-one terms, after shifting V'_i by its mean.
    """
    b, n, d, c = u.shape
    f32 = acc_dtype(x.dtype, u.dtype, self.FAM.linear_q.kernel.dtype)  # float32 unless the model is float64
    fam, arm = self.FAM, self.ARM
    p32 = lambda v: v[...].astype(f32)
    xf = x.astype(f32)
    # FAM (Eq. 4 with A = U_i, B = X).
    kf = xf @ p32(fam.linear_k.kernel) + p32(fam.linear_k.bias)  # [B, D, C/2]
    proj = jnp.einsum("bkh,ch->bkc", kf, p32(fam.linear_q.kernel))  # [B, D, C]
    logits = jnp.einsum("bnqc,bkc->bnqk", u, proj.astype(u.dtype), preferred_element_type=f32)
    logits = logits + (kf @ p32(fam.linear_q.bias))[:, None, None, :]
    a_fam = jax.nn.softmax(logits * fam.scale, axis=-1)  # [B, N, D, D]
    v = xf @ p32(fam.linear_v.kernel) + p32(fam.linear_v.bias)  # [B, D, C]; F_i = A_i V
    # ARM (Eq. 5): query F_j, key/value F_i, for every ordered pair (i, j).
    qa = v @ p32(arm.linear_q.kernel)  # [B, D, C/2]
    ka = v @ p32(arm.linear_k.kernel)  # [B, D, C/2]
    gq = jnp.einsum("bqh,bkh->bqk", qa, ka)  # [B, D, D]
    h = jnp.einsum("bjqm,bmk->bjqk", a_fam, gq)  # [B, N, D, D]: A_j Q K^T
    r = jnp.einsum("bikm,bm->bik", a_fam, ka @ p32(arm.linear_q.bias))  # [B, N, D]
    pair_logits = jnp.einsum("bjqm,bikm->bijqk", h, a_fam) + r[:, :, None, None, :]
    a = jax.nn.softmax(pair_logits * arm.scale, axis=-1)  # [B, N(i), N(j), D, D]
    we = p32(self.edge_proj.kernel)
    y = (v @ p32(arm.linear_v.kernel)) @ we  # [B, D, C]
    bias = p32(arm.linear_v.bias) @ we + p32(self.edge_proj.bias)  # [C]
    abar = jnp.mean(a, axis=3)  # [B, N, N, D]
    w = jnp.einsum("bijk,bikm->bijm", abar, a_fam)  # [B, N, N, D]
    zbar = (jnp.einsum("bijm,bmc->bijc", w, y) + bias).reshape(b, n * n, c)  # token-mean of z
    if self.bn.use_running_average:
      return self.bn.normalize(zbar, self.bn.mean[...], self.bn.var[...])
    # Per-node shift c_i (the mean of V'_i over batch, tokens, channels): z - c_i = a (V'_i - c_i).
    ay1 = jnp.einsum("bikm,bm->bik", a_fam, jnp.sum(y, axis=-1))  # [B, N, D]: A_i Y 1
    shift = jax.lax.stop_gradient(jnp.mean(ay1, axis=(0, 2)) / c + jnp.mean(bias))  # [N]
    beta = bias[None, :] - shift[:, None]  # [N, C]
    rowsum = ay1 + jnp.sum(beta, axis=-1)[None, :, None]  # [B, N, D]: (V'_i - c_i) 1
    s1 = jnp.einsum("bijk,bik->ij", jnp.sum(a, axis=3), rowsum)  # sum over (b, d, c) of z - c_i
    yy = jnp.einsum("bmc,blc->bml", y, y)  # [B, D, D]
    ayb = jnp.einsum("bikm,bmi->bik", a_fam, jnp.einsum("bmc,ic->bmi", y, beta))  # [B, N, D]
    gram = (
      jnp.einsum("bikm,bml,bipl->bikp", a_fam, yy, a_fam)
      + ayb[:, :, :, None]
      + ayb[:, :, None, :]
      + jnp.sum(beta * beta, axis=-1)[None, :, None, None]
    )  # [B, N, D, D]
    s2 = jnp.sum(jnp.einsum("bijqk,bikl->bijql", a, gram) * a, axis=(0, 3, 4))  # [N, N]
    count = b * d * c
    mean_c = s1 / count
    var = jnp.maximum(s2 / count - jnp.square(mean_c), 0.0).reshape(n * n)
    mean = (mean_c + shift[:, None]).reshape(n * n)
    self.bn.update_running_stats(mean, var, count)
    return self.bn.normalize(zbar, mean, var)

  def __call__(self, u: jax.Array, x: jax.Array) -> jax.Array:
    out = self._streaming(u, x) if self.streaming else self._direct(self.fam(u, x))
    return out.astype(self.dtype)  # [B, N*N, C]
