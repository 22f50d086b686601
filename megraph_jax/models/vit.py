"""The MAE ViT-B/16 encoder OpenGraphAU uses as a backbone (its ``modeling_pretrain.py``: He et al. 2022, MAE).

The encoder of MAE pre-training without masking: 16x16 patches, fixed sine-cosine positions (no class token),
12 pre-norm blocks whose qkv projection has a query and a value bias but no key bias, a final LayerNorm
(epsilon 1e-6). Returns every patch token ``[B, D, C]``: D = 196 and C = 768 at 224 px.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from megraph_jax.models.layers import FlatLinear, apply_block
from megraph_jax.models.swin import Mlp

_XAVIER = nnx.initializers.xavier_uniform()
_ZEROS = nnx.initializers.zeros_init()


def sinusoid_positions(num_positions: int, dim: int) -> np.ndarray:
  """Transformer sine-cosine table ``[num_positions, dim]`` (float64): angle p / 10000^(2 floor(j/2) / dim),
  sin on even channels j, cos on odd ones (MAE's ``get_sinusoid_encoding_table``)."""
  pos = np.arange(num_positions, dtype=np.float64)[:, None]
  j = np.arange(dim)
  angle = pos / np.power(10000.0, 2 * (j // 2) / dim)[None, :]
  return np.where(j % 2 == 0, np.sin(angle), np.cos(angle))


def _layer_norm(dim: int, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm with MAE's epsilon 1e-6 and exact variance."""
  return nnx.LayerNorm(dim, epsilon=1e-6, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _linear(din: int, dout: int, use_bias: bool, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> FlatLinear:
  """Linear with MAE's initialisation (Xavier-uniform weight, zero bias)."""
  return FlatLinear(
    din, dout, use_bias=use_bias, kernel_init=_XAVIER, bias_init=_ZEROS, dtype=dtype, param_dtype=param_dtype, rngs=rngs
  )


class Attention(nnx.Module):
  """Multi-head self-attention softmax(q k^T / sqrt(d_h)) v; qkv bias = (q_bias, 0, v_bias) as MAE's."""

  def __init__(self, dim: int, num_heads: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = _linear(dim, 3 * dim, False, dtype, param_dtype, rngs)
    self.q_bias = nnx.Param(jnp.zeros((dim,), param_dtype))
    self.v_bias = nnx.Param(jnp.zeros((dim,), param_dtype))
    self.proj = _linear(dim, dim, True, dtype, param_dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, c = x.shape
    bias = jnp.concatenate([self.q_bias[...], jnp.zeros_like(self.v_bias[...]), self.v_bias[...]])
    qkv = (self.qkv(x) + bias.astype(x.dtype)).reshape(b, n, 3, self.num_heads, c // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, D, H, c/H]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(self.scale, q.dtype), k)
    attn = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1).astype(v.dtype)
    return self.proj(jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, n, c))  # [B, D, C]


class Block(nnx.Module):
  """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) (exact GELU, hidden 4C)."""

  def __init__(self, dim: int, num_heads: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    self.norm1 = _layer_norm(dim, dtype, param_dtype, rngs)
    self.attn = Attention(dim, num_heads, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm2 = _layer_norm(dim, dtype, param_dtype, rngs)
    self.mlp = Mlp(dim, 4 * dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class MAEEncoder(nnx.Module):
  """ViT encoder of MAE: NHWC image ``[B, H, W, 3]`` -> normalised patch tokens ``[B, (H/16)(W/16), C]``."""

  def __init__(
    self,
    *,
    img_size: int = 224,
    patch_size: int = 16,
    embed_dim: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    if img_size % patch_size:
      raise ValueError(f"img_size {img_size} is not a multiple of the patch size {patch_size}")
    self.img_size, self.patch_size = img_size, patch_size
    self.num_features = self.embed_dim = embed_dim
    self.num_tokens = (img_size // patch_size) ** 2
    self.dtype = dtype
    self.patch_embed = nnx.Conv(
      3,
      embed_dim,
      (patch_size, patch_size),
      strides=(patch_size, patch_size),
      padding="VALID",
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )
    self.pos_dtype = np.float64 if param_dtype == jnp.float64 else np.float32  # the official: a torch.FloatTensor
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.blocks = nnx.List([Block(embed_dim, num_heads, **kw) for _ in range(depth)])
    self.norm = _layer_norm(embed_dim, dtype, param_dtype, rngs)
    self.remat = False  # rematerialise each block in the backward pass (set_attributes(remat=...))

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[1:] != (self.img_size, self.img_size, 3):
      raise ValueError(f"the MAE encoder expects NHWC input [B, {self.img_size}, {self.img_size}, 3], got {x.shape}")
    x = self.patch_embed(x.astype(self.dtype))  # [B, H/16, W/16, C]
    b, h, w, c = x.shape
    pos = sinusoid_positions(h * w, c).astype(self.pos_dtype)  # fixed, not learned: no weights, a constant
    x = x.reshape(b, h * w, c) + jnp.asarray(pos, x.dtype)  # [B, D, C]
    for block in self.blocks:
      x = apply_block(block, x, self.remat)
    return self.norm(x)  # [B, D, C]


def mae_base_patch16_224(**kw) -> MAEEncoder:
  """ViT-B/16 (embed 768, depth 12, 12 heads): the official ``pretrain_mae_base_patch16_224`` encoder."""
  return MAEEncoder(**{"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 16, **kw})
