"""Swin Transformer backbone (Microsoft release layout, as ME-GraphAU uses it) in Flax NNX."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from megraph_jax.models.layers import DropPath, FlatLinear, apply_block
from megraph_jax.numerics import acc_dtype

_LINEAR_INIT = nnx.initializers.truncated_normal(stddev=0.02)
_ZEROS = nnx.initializers.zeros_init()
# torch's default Conv2d init (kaiming_uniform with a=sqrt(5)) is U(+-1/sqrt(fan_in)): variance 1/(3 fan_in).
_CONV_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_MASK_VALUE = -100.0  # Logit offset for token pairs from different regions of a shifted window.


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  """Returns ``(v, v)`` for an int, else the two-element tuple."""
  if isinstance(v, int):
    return (v, v)
  h, w = v
  return (int(h), int(w))


@functools.lru_cache(maxsize=None)
def relative_position_index(window: int) -> np.ndarray:
  """Index into the ``[(2w-1)^2, heads]`` bias table for each token pair of a window: ``[w*w, w*w]``."""
  rows, cols = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
  rows, cols = rows.reshape(-1), cols.reshape(-1)  # [N]
  d_row = rows[:, None] - rows[None, :] + (window - 1)  # [N, N] in [0, 2w-2]
  d_col = cols[:, None] - cols[None, :] + (window - 1)
  index = d_row * (2 * window - 1) + d_col
  index.setflags(write=False)
  return index


@functools.lru_cache(maxsize=None)
def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
  """Additive mask ``[nW, N, N]`` (0 or -100) for attention inside cyclically shifted windows."""

  def regions(size: int) -> np.ndarray:
    # After rolling by -shift, the last window mixes tokens from two places: label the 3 bands.
    idx = np.arange(size)
    return (idx >= size - window).astype(np.int64) + (idx >= size - shift).astype(np.int64)

  label = regions(height)[:, None] * 3 + regions(width)[None, :]  # [H, W]
  label = label.reshape(height // window, window, width // window, window)
  label = label.transpose(0, 2, 1, 3).reshape(-1, window * window)  # [nW, N]
  mask = np.where(label[:, :, None] != label[:, None, :], _MASK_VALUE, 0.0).astype(np.float32)
  mask.setflags(write=False)
  return mask  # [nW, N, N]


def window_partition(x: jax.Array, window: int) -> jax.Array:
  """``[B, H, W, C]`` -> ``[B, nW, window*window, C]`` (windows in row-major order)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, H/w, W/w, w, w, C]
  return x.reshape(b, (h // window) * (w // window), window * window, c)


def window_merge(windows: jax.Array, window: int, height: int, width: int) -> jax.Array:
  """``[B, nW, window*window, C]`` -> ``[B, H, W, C]``; the inverse of ``window_partition``."""
  b, _, _, c = windows.shape
  x = windows.reshape(b, height // window, width // window, window, window, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, H/w, w, W/w, w, C]
  return x.reshape(b, height, width, c)


def _layer_norm(dim: int, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm with torch's epsilon and exact variance; statistics are float32."""
  return nnx.LayerNorm(dim, epsilon=1e-5, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _linear(din: int, dout: int, use_bias: bool, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
  """Linear with the Swin initialisation (trunc-normal std .02, zero bias)."""
  return FlatLinear(
    din,
    dout,
    use_bias=use_bias,
    kernel_init=_LINEAR_INIT,
    bias_init=_ZEROS,
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=rngs,
  )


class Mlp(nnx.Module):
  """fc1 -> exact GELU -> fc2."""

  def __init__(self, dim: int, hidden: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    self.fc1 = _linear(dim, hidden, True, dtype, param_dtype, rngs)
    self.fc2 = _linear(hidden, dim, True, dtype, param_dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class WindowAttention(nnx.Module):
  """Multi-head self-attention inside windows with a learned relative position bias."""

  def __init__(self, dim: int, window: int, num_heads: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
    self.dim = dim
    self.window = window
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.dtype = dtype
    self.relative_position_bias_table = nnx.Param(
      _LINEAR_INIT(rngs.params(), ((2 * window - 1) ** 2, num_heads), param_dtype)
    )
    relative_position_index(window)  # Builds (and caches) the NumPy constant now.
    self.qkv = _linear(dim, 3 * dim, True, dtype, param_dtype, rngs)
    self.proj = _linear(dim, dim, True, dtype, param_dtype, rngs)

  def __call__(self, x: jax.Array, mask: np.ndarray | None = None) -> jax.Array:
    b, nw, n, c = x.shape  # [B, nW, N, C]
    h = self.num_heads
    qkv = self.qkv(x).reshape(b, nw, n, 3, h, c // h)  # [B, nW, N, 3, h, d]
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]  # [B, nW, N, h, d]
    q = q * jnp.asarray(self.scale, q.dtype)
    logits = jnp.einsum(
      "bwqhd,bwkhd->bwhqk", q, k, preferred_element_type=acc_dtype(q.dtype, k.dtype)
    )  # [B, nW, h, N, N]
    index = relative_position_index(self.window).reshape(-1)
    bias = self.relative_position_bias_table[...][index].astype(logits.dtype)  # [N*N, h]
    logits = logits + bias.reshape(n, n, h).transpose(2, 0, 1)  # + [h, N, N]
    if mask is not None:
      logits = logits + jnp.asarray(mask)[None, :, None]  # + [1, nW, 1, N, N]
    attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bwhqk,bwkhd->bwqhd", attn, v).reshape(b, nw, n, c)  # [B, nW, N, C]
    return self.proj(out)


class SwinTransformerBlock(nnx.Module):
  """(Shifted-)window attention and MLP, each pre-norm with a residual and stochastic depth."""

  def __init__(
    self,
    dim: int,
    resolution: tuple[int, int],
    num_heads: int,
    *,
    window_size: int,
    shift_size: int,
    mlp_ratio: float,
    drop_path: float,
    dtype: Any,
    param_dtype: Any,
    rngs: nnx.Rngs,
  ):
    self.dim = dim
    self.resolution = resolution
    height, width = resolution
    if min(resolution) <= window_size:  # One window covers the map: no partition, no shift.
      window_size, shift_size = min(resolution), 0
    if height % window_size or width % window_size:
      raise ValueError(
        f"feature map {height}x{width} is not divisible by the window size {window_size}; "
        "choose img_size so that each stage is a multiple of the window or at most one window"
      )
    self.window_size = window_size
    self.shift_size = shift_size
    if shift_size:
      shifted_window_mask(height, width, window_size, shift_size)  # Builds (and caches) the constant now.
    self.norm1 = _layer_norm(dim, dtype, param_dtype, rngs)
    self.attn = WindowAttention(dim, window_size, num_heads, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.drop_path = DropPath(drop_path, rngs=rngs)
    self.norm2 = _layer_norm(dim, dtype, param_dtype, rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    height, width = self.resolution
    ws, s = self.window_size, self.shift_size
    b, _, c = x.shape  # [B, L, C]
    y = self.norm1(x).reshape(b, height, width, c)  # [B, H, W, C]
    if s:
      y = jnp.roll(y, (-s, -s), axis=(1, 2))
    y = window_partition(y, ws)  # [B, nW, N, C]
    y = self.attn(y, shifted_window_mask(height, width, ws, s) if s else None)
    y = window_merge(y, ws, height, width)  # [B, H, W, C]
    if s:
      y = jnp.roll(y, (s, s), axis=(1, 2))
    x = x + self.drop_path(y.reshape(b, height * width, c))  # [B, L, C]
    return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nnx.Module):
  """2x2 concat (x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]) -> LayerNorm -> Linear."""

  def __init__(self, dim: int, resolution: tuple[int, int], *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    if resolution[0] % 2 or resolution[1] % 2:
      raise ValueError(f"patch merging needs an even feature map, got {resolution[0]}x{resolution[1]}")
    self.resolution = resolution
    self.norm = _layer_norm(4 * dim, dtype, param_dtype, rngs)
    self.reduction = _linear(4 * dim, 2 * dim, False, dtype, param_dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    height, width = self.resolution
    b, _, c = x.shape  # [B, H*W, C]
    x = x.reshape(b, height // 2, 2, width // 2, 2, c)  # [B, H/2, dh, W/2, dw, C]
    x = x.transpose(0, 1, 3, 4, 2, 5).reshape(b, (height // 2) * (width // 2), 4 * c)  # [B, L/4, 4C]
    return self.reduction(self.norm(x))  # [B, L/4, 2C]


class BasicLayer(nnx.Module):
  """One stage: ``depth`` blocks alternating plain and shifted windows, then optional patch merging."""

  def __init__(
    self,
    dim: int,
    resolution: tuple[int, int],
    depth: int,
    num_heads: int,
    *,
    window_size: int,
    mlp_ratio: float,
    drop_path: Sequence[float],
    downsample: bool,
    dtype: Any,
    param_dtype: Any,
    rngs: nnx.Rngs,
  ):
    self.blocks = nnx.List(
      [
        SwinTransformerBlock(
          dim,
          resolution,
          num_heads,
          window_size=window_size,
          shift_size=0 if j % 2 == 0 else window_size // 2,
          mlp_ratio=mlp_ratio,
          drop_path=drop_path[j],
          dtype=dtype,
          param_dtype=param_dtype,
          rngs=rngs,
        )
        for j in range(depth)
      ]
    )
    self.downsample = (
      PatchMerging(dim, resolution, dtype=dtype, param_dtype=param_dtype, rngs=rngs) if downsample else None
    )
    self.remat = False  # rematerialise each block in the backward pass (set_attributes(remat=...))

  def __call__(self, x: jax.Array) -> jax.Array:
    for block in self.blocks:
      x = apply_block(block, x, self.remat)
    return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nnx.Module):
  """Non-overlapping patch projection (conv k=s=patch) followed by LayerNorm."""

  def __init__(self, patch_size: int, in_chans: int, embed_dim: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    fan_in = in_chans * patch_size * patch_size
    bound = 1.0 / np.sqrt(fan_in)
    self.proj = nnx.Conv(
      in_chans,
      embed_dim,
      (patch_size, patch_size),
      strides=(patch_size, patch_size),
      padding="VALID",
      kernel_init=_CONV_INIT,
      bias_init=lambda key, shape, dt: jax.random.uniform(key, shape, dt, -bound, bound),
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )
    self.norm = _layer_norm(embed_dim, dtype, param_dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.proj(x)  # [B, H/p, W/p, C]
    b, h, w, c = x.shape
    return self.norm(x.reshape(b, h * w, c))  # [B, L, C]


class SwinTransformer(nnx.Module):
  """Swin Transformer trunk: NHWC image ``[B, H, W, 3]`` -> normalised tokens ``[B, D, C]``."""

  def __init__(
    self,
    *,
    img_size: int | Sequence[int] = 224,
    patch_size: int = 4,
    embed_dim: int,
    depths: Sequence[int],
    num_heads: Sequence[int],
    window_size: int = 7,
    mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.0,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    if len(depths) != len(num_heads):
      raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
    self.img_size = _pair(img_size)
    if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
      raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {patch_size}")
    merge = patch_size * 2 ** (len(depths) - 1)  # each of the len(depths) - 1 patch mergings halves the grid
    if self.img_size[0] % merge or self.img_size[1] % merge:
      raise ValueError(
        f"img_size {self.img_size} is not a multiple of {merge} (patch_size {patch_size} x 2 per patch "
        f"merging over {len(depths)} stages); e.g. "
        f"{merge * max(1, round(self.img_size[0] / merge))} works"
      )
    self.patch_size = patch_size
    self.embed_dim = embed_dim
    self.depths = tuple(depths)
    self.num_heads = tuple(num_heads)
    self.window_size = window_size
    self.num_layers = len(depths)
    self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))
    self.dtype = dtype
    self.patch_embed = PatchEmbed(patch_size, 3, embed_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()  # Linear over all blocks.
    res = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
    layers = []
    for i, depth in enumerate(depths):
      start = sum(depths[:i])
      layers.append(
        BasicLayer(
          embed_dim * 2**i,
          res,
          depth,
          num_heads[i],
          window_size=window_size,
          mlp_ratio=mlp_ratio,
          drop_path=rates[start : start + depth],
          downsample=i < self.num_layers - 1,
          dtype=dtype,
          param_dtype=param_dtype,
          rngs=rngs,
        )
      )
      if i < self.num_layers - 1:
        res = (res[0] // 2, res[1] // 2)
    self.layers = nnx.List(layers)
    self.num_tokens = res[0] * res[1]
    self.norm = _layer_norm(self.num_features, dtype, param_dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or tuple(x.shape[1:3]) != self.img_size or x.shape[3] != 3:
      raise ValueError(
        f"SwinTransformer expects NHWC input [B, {self.img_size[0]}, {self.img_size[1]}, 3], got {tuple(x.shape)}"
      )
    x = self.patch_embed(x.astype(self.dtype))  # [B, H/4 * W/4, C]
    for layer in self.layers:
      x = layer(x)  # [B, L_i, C_i] -> [B, L_i/4, 2 C_i] except the last stage
    return self.norm(x)  # [B, D, num_features]


_CONFIGS = {
  "swin_transformer_tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
  "swin_transformer_small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
  "swin_transformer_base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
}


def swin(name: str, **kw) -> SwinTransformer:
  """Builds a Swin by its ME-GraphAU name; keyword arguments override the preset (``rngs`` required)."""
  if name not in _CONFIGS:
    raise ValueError(f"unknown Swin backbone '{name}', expected one of {sorted(_CONFIGS)}")
  return SwinTransformer(**{**_CONFIGS[name], "window_size": 7, "patch_size": 4, **kw})


def swin_transformer_tiny(**kw) -> SwinTransformer:
  """Swin-T: embed 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), drop_path_rate 0.2."""
  return swin("swin_transformer_tiny", **kw)


def swin_transformer_small(**kw) -> SwinTransformer:
  """Swin-S: embed 96, depths (2, 2, 18, 2), heads (3, 6, 12, 24), drop_path_rate 0.3."""
  return swin("swin_transformer_small", **kw)


def swin_transformer_base(**kw) -> SwinTransformer:
  """Swin-B: embed 128, depths (2, 2, 18, 2), heads (4, 8, 16, 32), drop_path_rate 0.5."""
  return swin("swin_transformer_base", **kw)
