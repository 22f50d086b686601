"""OpenGraphAU (the official repository's ``OpenGraphAU/``): ME-GraphAU for 27 main AUs + 14 left/right AUs.

Both stages share backbone -> ``global_linear`` -> AFG (``main_class_linears``, one block per main AU) and end in
:class:`MainSubSC`; stage 1 adds the FGG (ANFL), stage 2 MEFL (``edge_extractor``) and two GatedGCN layers
(``gnn.graph_layers``) whose node update is v + ReLU(BN(.)), with no edge classifier. Scores are cosine
similarities (no sigmoid), read against 0.5 as the official demo and tests do.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from typing_extensions import Unpack

from megraph_jax.models.afg import AFG
from megraph_jax.models.fgg import FGG
from megraph_jax.models.gated_gcn import GatedGCN, edge_gates
from megraph_jax.models.mefl import MEFL
from megraph_jax.models.sc_head import SCHead
from megraph_jax.models.trunk import FaceTrunk, ModelOutput, TrunkOptions
from megraph_jax.task import OPENGRAPHAU_AUS, OPENGRAPHAU_MAIN_AUS, OPENGRAPHAU_SUB_NODES

NUM_MAIN = len(OPENGRAPHAU_MAIN_AUS)  # 27 graph nodes
NUM_OUTPUTS = len(OPENGRAPHAU_AUS)  # 41 scores
SUB_INDEX = tuple(int(i) for i in np.repeat(OPENGRAPHAU_SUB_NODES, 2))  # [14]: the main node of each L/R AU

# The official OpenGraphAU ``--metric`` names its two distances the other way round from ME-GraphAU (its 'l1' is
# the Euclidean distance, its 'l2' the sum of absolute differences): official name -> our FGG metric.
OFFICIAL_METRICS = {"dots": "dots", "cosine": "cosine", "l1": "l2", "l2": "l1"}


class MainSubSC(nnx.Module):
  """Eq. 2 for 41 outputs: p_i = cos(v_i, ReLU(main_sc_i)) for the 27 main AUs, then
  p_{2k+s} = cos(v_{sub_list[k]}, ReLU(sub_sc_{2k+s})) for the left (s=0) and right (s=1) AU of pair k."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs, param_dtype: Any = jnp.float32):
    self.main_sc = SCHead(channels, NUM_MAIN, param_dtype=param_dtype, rngs=rngs)
    self.sub_sc = SCHead(channels, len(SUB_INDEX), param_dtype=param_dtype, rngs=rngs)

  def __call__(self, v: jax.Array) -> jax.Array:
    # v: [B, 27, C] -> [B, 41]
    sub = jnp.stack([v[:, i] for i in SUB_INDEX], axis=1)  # [B, 14, C]; static slices, no index array
    return jnp.concatenate([self.main_sc(v), self.sub_sc(sub)], axis=-1)


class _OpenGraphAUBase(FaceTrunk):
  """FaceTrunk, the AFG over the 27 main AUs and the 41-output SC head, shared by both stages."""

  HEAD = "opengraphau"

  def __init__(self, backbone: str, *, num_aus: int = NUM_OUTPUTS, rngs: nnx.Rngs, **trunk: Unpack[TrunkOptions]):
    if num_aus != NUM_OUTPUTS:
      raise ValueError(f"OpenGraphAU has {NUM_OUTPUTS} outputs, got num_aus={num_aus}")
    super().__init__(backbone=backbone, num_aus=NUM_OUTPUTS, rngs=rngs, **trunk)
    self.num_main = NUM_MAIN
    self.afg = AFG(self.channels, NUM_MAIN, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
    self.sc = MainSubSC(self.channels, param_dtype=self.param_dtype, rngs=rngs)

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    return self.head(self.features(images))


class OpenGraphAUStage1(_OpenGraphAUBase):
  """Stage 1 (official ``model/ANFL.py``): AFG -> FGG over the 27 main nodes -> 41 scores."""

  STAGE = 1
  SPEC_FIELDS = ("neighbor_num", "metric")

  def __init__(
    self,
    backbone: str,
    *,
    neighbor_num: int = 4,
    metric: str = "dots",
    rngs: nnx.Rngs,
    **trunk: Unpack[TrunkOptions],
  ):
    super().__init__(backbone, rngs=rngs, **trunk)
    kw = dict(neighbor_num=neighbor_num, metric=metric, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
    self.fgg = FGG(self.channels, NUM_MAIN, **kw)

  def spec_fields(self) -> dict[str, Any]:
    return {"neighbor_num": self.fgg.neighbor_num, "metric": self.fgg.metric}

  def relation_graph(self, out: ModelOutput, k: int) -> dict[str, jax.Array]:
    """The FGG's own kNN graph over the 27 main AUs."""
    return {"adjacency": out["adjacency"]}

  def head(self, x: jax.Array) -> dict[str, jax.Array]:
    """ANFL on X ``[B, D, C]``: scores ``[B, 41]``, node features ``[B, 27, C]``, kNN adjacency ``[B, 27, 27]``."""
    v = jnp.mean(self.afg(x), axis=2)  # [B, N, D, C] -> [B, 27, C]
    v, adj = self.fgg(v)
    return {"au_probs": self.sc(v), "node_features": v, "adjacency": adj}


class OpenGraphAUStage2(_OpenGraphAUBase):
  """Stage 2 (official ``model/MEFL.py``): AFG -> MEFL -> 2 GatedGCN layers (v + ReLU(BN(.))) -> 41 scores."""

  STAGE = 2
  SPEC_FIELDS = ("gnn_layers",)

  def __init__(self, backbone: str, *, gnn_layers: int = 2, rngs: nnx.Rngs, **trunk: Unpack[TrunkOptions]):
    super().__init__(backbone, rngs=rngs, **trunk)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
    self.mefl = MEFL(self.channels, NUM_MAIN, **kw)
    self.gnn = GatedGCN(self.channels, NUM_MAIN, num_layers=gnn_layers, relu_in_residual=True, **kw)

  def spec_fields(self) -> dict[str, Any]:
    return {"gnn_layers": len(self.gnn.layers)}

  def relation_graph(self, out: ModelOutput, k: int) -> dict[str, jax.Array]:
    """kNN graph of the node features and ``edge_strength``: N' x the channel-mean gate of the last GatedGCN layer
    (no edge classifier in OpenGraphAU)."""
    n = out["node_features"].shape[1]
    strength = n * jnp.mean(edge_gates(out["edge_features"], n), axis=-1).astype(jnp.float32)  # [B, 27, 27]
    return {**super().relation_graph(out, k), "edge_strength": strength}

  def head(self, x: jax.Array) -> dict[str, jax.Array]:
    """On X ``[B, D, C]``: scores ``[B, 41]``, node ``[B, 27, C]`` and edge features ``[B, 27*27, C]``."""
    u = self.afg(x)  # [B, 27, D, C]
    v = jnp.mean(u, axis=2)  # [B, 27, C]
    v, e = self.gnn(v, self.mefl(u, x))  # edges [B, 27*27, C], p = i*27 + j
    return {"au_probs": self.sc(v), "node_features": v, "edge_features": e}
