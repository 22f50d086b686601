"""The two ME-GraphAU models: Stage1Model (backbone + ANFL) and Stage2Model (backbone + AFG + MEFL + GatedGCN)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from typing_extensions import Unpack

from megraph_jax.models.afg import AFG
from megraph_jax.models.fgg import FGG
from megraph_jax.models.gated_gcn import GatedGCN
from megraph_jax.models.layers import torch_linear, xavier_uniform_init
from megraph_jax.models.mefl import MEFL
from megraph_jax.models.sc_head import SCHead
from megraph_jax.models.trunk import FaceTrunk, ModelOutput, TrunkOptions
from megraph_jax.numerics import acc_dtype

NUM_RELATION_CLASSES = 4  # (0,0), (0,1), (1,0), (1,1) for (AU i, AU j); label = 2*y_i + y_j


class _MEGraphBase(FaceTrunk):
  """FaceTrunk, AFG and the SC head, shared by both ME-GraphAU stages."""

  HEAD = "megraph"

  def __init__(self, backbone: str, num_aus: int, *, rngs: nnx.Rngs, **trunk: Unpack[TrunkOptions]):
    if num_aus < 2:
      raise ValueError(f"num_aus must be at least 2, got {num_aus}")
    super().__init__(backbone=backbone, num_aus=num_aus, rngs=rngs, **trunk)
    self.afg = AFG(self.channels, num_aus, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
    self.sc = SCHead(self.channels, num_aus, param_dtype=self.param_dtype, rngs=rngs)


class Stage1Model(_MEGraphBase):
  """Stage 1: backbone -> global_linear -> AFG -> FGG -> SC head (ANFL, paper Sec. 2.1).

  ``use_fgg=False`` gives the "backbone + AFG" row of the paper's Table 3 (no graph).
  """

  STAGE = 1
  SPEC_FIELDS = ("neighbor_num", "metric", "use_fgg")

  def __init__(
    self,
    backbone: str,
    num_aus: int,
    *,
    neighbor_num: int = 4,
    metric: str = "dots",
    use_fgg: bool = True,
    rngs: nnx.Rngs,
    **trunk: Unpack[TrunkOptions],
  ):
    super().__init__(backbone, num_aus, rngs=rngs, **trunk)
    self.use_fgg = use_fgg
    self.fgg = (
      FGG(
        self.channels,
        num_aus,
        neighbor_num=neighbor_num,
        metric=metric,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        rngs=rngs,
      )
      if use_fgg
      else None
    )

  def spec_fields(self) -> dict[str, Any]:
    if self.fgg is None:
      return {"use_fgg": False}
    return {"neighbor_num": self.fgg.neighbor_num, "metric": self.fgg.metric}

  def relation_graph(self, out: ModelOutput, k: int) -> dict[str, jax.Array]:
    """The FGG's own kNN graph (the one the model used); without the FGG, that of the node features."""
    return {"adjacency": out["adjacency"]} if self.fgg is not None else super().relation_graph(out, k)

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

  STAGE = 2
  SPEC_FIELDS = ("gnn_layers",)

  def __init__(
    self,
    backbone: str,
    num_aus: int,
    *,
    gnn_layers: int = 2,
    mefl_streaming: bool = True,
    rngs: nnx.Rngs,
    **trunk: Unpack[TrunkOptions],
  ):
    super().__init__(backbone, num_aus, rngs=rngs, **trunk)
    c, kw = self.channels, dict(dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
    self.mefl = MEFL(c, num_aus, streaming=mefl_streaming, **kw)
    self.gnn = GatedGCN(c, num_aus, num_layers=gnn_layers, **kw)
    self.edge_fc = torch_linear(c, NUM_RELATION_CLASSES, kernel_init=xavier_uniform_init(), **kw)

  def spec_fields(self) -> dict[str, Any]:
    return {"gnn_layers": len(self.gnn.layers)}

  def relation_graph(self, out: ModelOutput, k: int) -> dict[str, jax.Array]:
    """kNN graph of the node features and ``edge_strength``: the edge classifier's P(both AUs occur), class (1,1)."""
    n = out["au_probs"].shape[1]
    strength = jax.nn.softmax(out["edge_logits"], axis=-1)[..., 3].reshape(-1, n, n)  # [B, N*N, 4] -> [B, N, N]
    return {**super().relation_graph(out, k), "edge_strength": strength}

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

  HEAD, STAGE = "baseline", 1

  def __init__(self, backbone: str, num_aus: int, *, rngs: nnx.Rngs, **trunk: Unpack[TrunkOptions]):
    super().__init__(backbone=backbone, num_aus=num_aus, rngs=rngs, **trunk)
    self.fc = torch_linear(self.channels, num_aus, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)

  def relation_graph(self, out: ModelOutput, k: int) -> dict[str, jax.Array]:
    """No graph: nothing to draw."""
    return {}

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    x = self.features(images)  # [B, D, C]
    logits = self.fc(jnp.mean(x, axis=1)).astype(acc_dtype(x.dtype))  # [B, N]
    return {"au_probs": jax.nn.sigmoid(logits), "au_logits": logits}
