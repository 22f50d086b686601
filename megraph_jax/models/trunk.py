"""The trunk every model starts with: backbone -> ``global_linear`` (the official ``global_linear`` LinearBlock)."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from megraph_jax.models.backbones import build_backbone, global_linear_channels
from megraph_jax.models.layers import LinearBlock


class FaceTrunk(nnx.Module):
  """Backbone -> ``global_linear``: images ``[B, H, W, 3]`` -> the full-face representation X ``[B, D, C]``.

  The start of every model here (ME-GraphAU's stages, the baseline, OpenGraphAU's stages); subclasses add
  their heads after calling ``__init__`` (parameters are drawn in that order: backbone, global_linear, heads).
  """

  def __init__(
    self,
    *,
    backbone: str,
    num_aus: int,
    img_size: int,
    drop_path_rate: float | None,
    dtype: Any,
    param_dtype: Any,
    rngs: nnx.Rngs,
    backbone_module: nnx.Module | None = None,
  ):
    self.backbone_name = backbone
    self.num_aus = num_aus
    self.img_size = img_size
    self.dtype = dtype
    self.backbone = (
      backbone_module
      if backbone_module is not None
      else build_backbone(
        backbone, img_size=img_size, drop_path_rate=drop_path_rate, dtype=dtype, param_dtype=param_dtype, rngs=rngs
      )
    )
    c_in = self.backbone.num_features
    self.channels = global_linear_channels(backbone, c_in)
    self.global_linear = LinearBlock(c_in, self.channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def set_remat(self, remat: bool) -> None:
    """Rematerialise backbone blocks in the backward pass (less activation memory, more compute)."""
    self.set_attributes(remat=remat, raise_if_not_found=False)

  def features(self, images: jax.Array) -> jax.Array:
    """Full-face representation X after ``global_linear``: ``[B, H, W, 3]`` -> ``[B, D, C]``."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [B, H, W, 3] (NHWC), got shape {images.shape}")
    return self.global_linear(self.backbone(images.astype(self.dtype)))


# What a stage-1 and a stage-2 model (ME-GraphAU's or OpenGraphAU's) share by name: the official second stage
# loads the stage-1 file with ``strict=False``, so exactly these sub-modules carry over.
SHARED_SUBMODULES = ("backbone", "global_linear", "afg", "sc")


def init_stage2_from_stage1(stage2: FaceTrunk, stage1: FaceTrunk) -> FaceTrunk:
  """Copies backbone, ``global_linear``, AFG and the SC vectors of a stage-1 model into a stage-2 model of the
  same family (the official ``train_stage2.py`` resume of a stage-1 file); returns ``stage2`` updated in place."""
  if (stage1.backbone_name, stage1.num_aus, stage1.channels) != (stage2.backbone_name, stage2.num_aus, stage2.channels):
    raise ValueError(
      f"stage-1 model ({stage1.backbone_name}, N={stage1.num_aus}) does not match stage 2 "
      f"({stage2.backbone_name}, N={stage2.num_aus})"
    )
  for name in SHARED_SUBMODULES:
    nnx.update(getattr(stage2, name), nnx.state(getattr(stage1, name)))
  return stage2
