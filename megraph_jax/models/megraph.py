"""The two ME-GraphAU models: Stage1Model (backbone + ANFL) and Stage2Model (backbone + AFG + MEFL + GatedGCN)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from megraph_jax.models.afg import AFG
from megraph_jax.models.fgg import FGG
from megraph_jax.models.gated_gcn import GatedGCN
from megraph_jax.models.layers import torch_linear, xavier_uniform_init
from megraph_jax.models.mefl import MEFL
from megraph_jax.models.sc_head import SCHead
from megraph_jax.models.trunk import FaceTrunk
from megraph_jax.numerics import acc_dtype

NUM_RELATION_CLASSES = 4  # (0,0), (0,1), (1,0), (1,1) for (AU i, AU j); label = 2*y_i + y_j


class _MEGraphBase(FaceTrunk):
  """FaceTrunk, AFG and the SC head, shared by both ME-GraphAU stages."""

  def __init__(self, *, num_aus: int, param_dtype: Any, rngs: nnx.Rngs, **trunk):
    if num_aus < 2:
      raise ValueError(f"num_aus must be at least 2, got {num_aus}")
    super().__init__(num_aus=num_aus, param_dtype=param_dtype, rngs=rngs, **trunk)
    self.afg = AFG(self.channels, num_aus, dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
    self.sc = SCHead(self.channels, num_aus, param_dtype=param_dtype, rngs=rngs)


class Stage1Model(_MEGraphBase):
  """Stage 1: backbone -> global_linear -> AFG -> FGG -> SC head (ANFL, paper Sec. 2.1).

  ``use_fgg=False`` gives the "backbone + AFG" row of the paper's Table 3 (no graph).
  """

  def __init__(
    self,
    backbone: str,
    num_aus: int,
    *,
    neighbor_num: int = 4,
    metric: str = "dots",
    use_fgg: bool = True,
    img_size: int = 224,
    drop_path_rate: float | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
    backbone_module: nnx.Module | None = None,
  ):
    super().__init__(
      backbone=backbone,
      num_aus=num_aus,
      img_size=img_size,
      drop_path_rate=drop_path_rate,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
      backbone_module=backbone_module,
    )
    self.use_fgg = use_fgg
    self.fgg = (
      FGG(
        self.channels,
        num_aus,
        neighbor_num=neighbor_num,
        metric=metric,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
      )
      if use_fgg
      else None
    )

  def head(self, x: jax.Array) -> dict[str, jax.Array]:
    """ANFL on X ``[B, D, C]``."""
    u = self.afg(x)  # [B, N, D, C]
    v = jnp.mean(u, axis=2)  # [B, N, C] node features
    out = {}
    if self.fgg is not None:
      v, out["adjacency"] = self.fgg(v)
    return {"au_probs": self.sc(v), "node_features": v, **out}

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    return self.head(self.features(images))


class Stage2Model(_MEGraphBase):
  """Stage 2: backbone -> global_linear -> AFG -> MEFL -> GatedGCN -> SC head and edge FC (Sec. 2.2)."""

  def __init__(
    self,
    backbone: str,
    num_aus: int,
    *,
    img_size: int = 224,
    drop_path_rate: float | None = None,
    gnn_layers: int = 2,
    mefl_streaming: bool = True,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
    backbone_module: nnx.Module | None = None,
  ):
    super().__init__(
      backbone=backbone,
      num_aus=num_aus,
      img_size=img_size,
      drop_path_rate=drop_path_rate,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
      backbone_module=backbone_module,
    )
    c = self.channels
    self.mefl = MEFL(c, num_aus, streaming=mefl_streaming, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gnn = GatedGCN(c, num_aus, num_layers=gnn_layers, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.edge_fc = torch_linear(
      c, NUM_RELATION_CLASSES, kernel_init=xavier_uniform_init(), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )

  def head(self, x: jax.Array) -> dict[str, jax.Array]:
    """AFG + MEFL + GatedGCN on X ``[B, D, C]``."""
    u = self.afg(x)  # [B, N, D, C]
    v = jnp.mean(u, axis=2)  # [B, N, C]
    e = self.mefl(u, x)  # [B, N*N, C]
    v, e = self.gnn(v, e)
    return {
      "au_probs": self.sc(v),
      "edge_logits": self.edge_fc(e).astype(acc_dtype(e.dtype)),
      "node_features": v,
      "edge_features": e,
    }

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    return self.head(self.features(images))


class BaselineModel(FaceTrunk):
  """Backbone -> global_linear -> GAP -> FC -> sigmoid: the "backbone only" row of the paper's Table 3."""

  def __init__(
    self,
    backbone: str,
    num_aus: int,
    *,
    img_size: int = 224,
    drop_path_rate: float | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
    backbone_module: nnx.Module | None = None,
  ):
    super().__init__(
      backbone=backbone,
      num_aus=num_aus,
      img_size=img_size,
      drop_path_rate=drop_path_rate,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
      backbone_module=backbone_module,
    )
    self.fc = torch_linear(self.channels, num_aus, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    x = self.features(images)  # [B, D, C]
    logits = self.fc(jnp.mean(x, axis=1)).astype(acc_dtype(x.dtype))  # [B, N]
    return {"au_probs": jax.nn.sigmoid(logits), "au_logits": logits}
