"""ResNet-18/34/50/101 backbone laid out like torchvision's, returning the full-face tokens [B, D, C]."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from megraph_jax.models.batchnorm import BatchNorm
from megraph_jax.models.layers import PointwiseConv, apply_block

# depth -> (block kind, blocks per stage), as torchvision's resnet{18,34,50,101}.
_CONFIGS = {
  18: ("basic", (2, 2, 2, 2)),
  34: ("basic", (3, 4, 6, 3)),
  50: ("bottleneck", (3, 4, 6, 3)),
  101: ("bottleneck", (3, 4, 23, 3)),
}
_NAMES = {f"resnet{d}": d for d in _CONFIGS}


def _conv(cin: int, cout: int, k: int, stride: int, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> PointwiseConv:
  """Bias-free k x k conv with torch's symmetric padding k // 2 and the official He-normal init."""
  p = k // 2
  std = math.sqrt(2.0 / (k * k * cout))  # Official ResNet init: normal(0, sqrt(2 / (k*k*out))).
  return PointwiseConv(
    cin,
    cout,
    kernel_size=(k, k),
    strides=(stride, stride),
    padding=((p, p), (p, p)),
    use_bias=False,
    dtype=dtype,
    param_dtype=param_dtype,
    kernel_init=nnx.initializers.normal(stddev=std),
    rngs=rngs,
  )


def _bn(c: int, dtype: Any, param_dtype: Any) -> BatchNorm:
  """PyTorch-semantics BatchNorm2d on the channel axis of NHWC."""
  return BatchNorm(c, axis=-1, dtype=dtype, param_dtype=param_dtype)


class BasicBlock(nnx.Module):
  """Two 3x3 convs with a residual (ResNet-18/34); stride on conv1."""

  expansion = 1

  def __init__(self, cin: int, planes: int, stride: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    cout = planes * self.expansion
    self.conv1 = _conv(cin, planes, 3, stride, dtype, param_dtype, rngs)
    self.bn1 = _bn(planes, dtype, param_dtype)
    self.conv2 = _conv(planes, cout, 3, 1, dtype, param_dtype, rngs)
    self.bn2 = _bn(cout, dtype, param_dtype)
    self.downsample = _downsample(cin, cout, stride, dtype, param_dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))  # [B, H/s, W/s, planes]
    y = self.bn2(self.conv2(y))
    return nnx.relu(y + _shortcut(self.downsample, x))


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 -> 1x1 convs with a residual (ResNet-50/101); stride on the 3x3 conv (v1.5)."""

  expansion = 4

  def __init__(self, cin: int, planes: int, stride: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    cout = planes * self.expansion
    self.conv1 = _conv(cin, planes, 1, 1, dtype, param_dtype, rngs)
    self.bn1 = _bn(planes, dtype, param_dtype)
    self.conv2 = _conv(planes, planes, 3, stride, dtype, param_dtype, rngs)
    self.bn2 = _bn(planes, dtype, param_dtype)
    self.conv3 = _conv(planes, cout, 1, 1, dtype, param_dtype, rngs)
    self.bn3 = _bn(cout, dtype, param_dtype)
    self.downsample = _downsample(cin, cout, stride, dtype, param_dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))  # [B, H, W, planes]
    y = nnx.relu(self.bn2(self.conv2(y)))  # [B, H/s, W/s, planes]
    y = self.bn3(self.conv3(y))  # [B, H/s, W/s, 4 * planes]
    return nnx.relu(y + _shortcut(self.downsample, x))


def _downsample(cin: int, cout: int, stride: int, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.List | None:
  """torchvision's ``downsample`` = [1x1 conv, BN] when the shape changes, else None."""
  if stride == 1 and cin == cout:
    return None
  return nnx.List([_conv(cin, cout, 1, stride, dtype, param_dtype, rngs), _bn(cout, dtype, param_dtype)])


def _shortcut(downsample: nnx.List | None, x: jax.Array) -> jax.Array:
  """Identity or projection shortcut."""
  if downsample is None:
    return x
  conv, bn = downsample
  return bn(conv(x))


class ResNet(nnx.Module):
  """torchvision-layout ResNet without avgpool/fc; ``__call__`` maps [B, H, W, 3] to [B, h*w, C]."""

  def __init__(self, depth: int, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if depth not in _CONFIGS:
      raise ValueError(f"unsupported ResNet depth {depth}; valid: {sorted(_CONFIGS)}")
    kind, counts = _CONFIGS[depth]
    block = BasicBlock if kind == "basic" else Bottleneck
    self.depth = depth
    self.dtype = dtype
    self.remat = False  # rematerialise each residual block in the backward pass (set_attributes(remat=...))
    self.conv1 = _conv(3, 64, 7, 2, dtype, param_dtype, rngs)
    self.bn1 = _bn(64, dtype, param_dtype)
    cin = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts)):
      blocks = []
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(block(cin, planes, stride, dtype=dtype, param_dtype=param_dtype, rngs=rngs))
        cin = planes * block.expansion
      setattr(self, f"layer{i + 1}", nnx.List(blocks))
    self.num_features = cin

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)  # [B, H, W, 3]
    x = nnx.relu(self.bn1(self.conv1(x)))  # [B, H/2, W/2, 64]
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # [B, H/4, W/4, 64]
    for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
      for blk in layer:
        x = apply_block(blk, x, self.remat)
    b, h, w, c = x.shape  # [B, H/32, W/32, C]
    return x.reshape(b, h * w, c)  # [B, D = h*w, C], row-major (h, w)


def resnet(name: str, *, rngs: nnx.Rngs, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32) -> ResNet:
  """Builds a ResNet from an official backbone name ('resnet18', 'resnet34', 'resnet50', 'resnet101')."""
  if name not in _NAMES:
    raise ValueError(f"unknown ResNet backbone '{name}'; valid names: {sorted(_NAMES, key=_NAMES.get)}")
  return ResNet(_NAMES[name], dtype=dtype, param_dtype=param_dtype, rngs=rngs)
