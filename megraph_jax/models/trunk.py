"""The trunk every model starts with: backbone -> ``global_linear`` (the official ``global_linear`` LinearBlock)."""

from __future__ import annotations

from typing import Any, ClassVar, TypedDict

import jax
import jax.numpy as jnp
from flax import nnx
from typing_extensions import NotRequired, Required

from megraph_jax.models.backbones import build_backbone, global_linear_channels
from megraph_jax.models.fgg import knn_adjacency
from megraph_jax.models.layers import LinearBlock


class TrunkOptions(TypedDict, total=False):
  """What every model takes besides its backbone name, AU count, head options and ``rngs`` (defaults: FaceTrunk's)."""

  img_size: int  # input side, px (official 224)
  drop_path_rate: float | None  # Swin/ViT stochastic depth; None = the backbone's official preset
  dtype: Any  # compute dtype (float32, bfloat16, float64)
  param_dtype: Any  # parameter dtype (float32; float64 for float64 models)
  backbone_module: nnx.Module | None  # a ready backbone instead of building one (tests: the heads alone)


class ModelOutput(TypedDict):
  """What every model returns (the output contract ``predict``, the losses and the pictures read).

  ``au_probs`` ``[B, N]`` always; ``node_features`` ``[B, N', C]`` where the model has a graph (N' = 27 for
  OpenGraphAU); ``adjacency`` ``[B, N', N']`` from a stage-1 FGG; ``edge_features`` ``[B, N'*N', C]`` in stage 2;
  ``edge_logits`` ``[B, N*N, 4]`` from ME-GraphAU's stage-2 edge classifier; ``au_logits`` from the baseline.
  """

  au_probs: Required[jax.Array]
  node_features: NotRequired[jax.Array]
  adjacency: NotRequired[jax.Array]
  edge_features: NotRequired[jax.Array]
  edge_logits: NotRequired[jax.Array]
  au_logits: NotRequired[jax.Array]


class FaceTrunk(nnx.Module):
  """Backbone -> ``global_linear``: images ``[B, H, W, 3]`` -> the full-face representation X ``[B, D, C]``.

  The start of every model here (ME-GraphAU's stages, the baseline, OpenGraphAU's stages); subclasses add
  their heads after calling ``__init__`` (parameters are drawn in that order: backbone, global_linear, heads).
  Each model class names its place in the family (``HEAD``, ``STAGE``: the key it is registered under in
  ``megraph_jax.model_factory.MODELS``) and the spec fields its constructor takes (``SPEC_FIELDS``; their values
  on an instance: :meth:`spec_fields`), so building, describing and converting models are lookups.
  """

  HEAD: ClassVar[str] = ""
  STAGE: ClassVar[int] = 0
  SPEC_FIELDS: ClassVar[tuple[str, ...]] = ()

  def __init__(
    self,
    *,
    backbone: str,
    num_aus: int,
    rngs: nnx.Rngs,
    img_size: int = 224,
    drop_path_rate: float | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    backbone_module: nnx.Module | None = None,
  ):
    self.backbone_name = backbone
    self.num_aus = num_aus
    self.img_size = img_size
    self.dtype = dtype
    self.param_dtype = param_dtype
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

  def spec_fields(self) -> dict[str, Any]:
    """This model's values of its ``SPEC_FIELDS`` (what rebuilds its head)."""
    return {}

  def relation_graph(self, out: ModelOutput, k: int) -> dict[str, jax.Array]:
    """What the relation-graph picture shows: ``adjacency`` ``[B, N', N']``, here the kNN graph (K = ``k``) of the
    node features; subclasses use their FGG's own graph, add stage 2's ``edge_strength`` or show nothing."""
    return {"adjacency": knn_adjacency(out["node_features"], k)}

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
