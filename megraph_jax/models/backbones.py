"""Backbone registry: the official ``--arc`` names -> NNX modules returning X ``[B, D, C]``."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from megraph_jax.models.resnet import resnet
from megraph_jax.models.swin import swin
from megraph_jax.models.vit import mae_base_patch16_224

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
SWINS = ("swin_transformer_tiny", "swin_transformer_small", "swin_transformer_base")
VITS = ("mae_base_patch16_224",)  # OpenGraphAU's MAE ViT-B/16 encoder (its --arc contains 'mae')
BACKBONES = RESNETS + SWINS + VITS


def backbone_family(name: str) -> str:
  """``'resnet'``, ``'swin'`` or ``'vit'``."""
  return "resnet" if name in RESNETS else "swin" if name in SWINS else "vit"


def build_backbone(
  name: str,
  *,
  rngs: nnx.Rngs,
  img_size: int = 224,
  drop_path_rate: float | None = None,
  dtype: Any = jnp.float32,
  param_dtype: Any = jnp.float32,
) -> nnx.Module:
  """Builds backbone ``name``; the module has ``num_features`` (C of X)."""
  if name in RESNETS:
    return resnet(name, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  if name in SWINS:
    kw = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
    return swin(name, img_size=img_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **kw)
  if name in VITS:
    return mae_base_patch16_224(img_size=img_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  raise ValueError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}")


def global_linear_channels(name: str, num_features: int) -> int:
  """Output channels of ``global_linear``: C/4 for ResNets, C/2 for Swins and the ViT (as the official)."""
  return num_features // 4 if name in RESNETS else num_features // 2
