"""Official ME-GraphAU head keys (``global_linear.*``, ``head.*``) -> our Stage1Model / Stage2Model."""

from __future__ import annotations

import numpy as np

from megraph_jax.models.afg import AFG
from megraph_jax.models.fgg import FGG
from megraph_jax.models.gated_gcn import GatedGCN
from megraph_jax.models.layers import LinearBlock
from megraph_jax.models.mefl import MEFL
from megraph_jax.models.sc_head import SCHead
from megraph_jax.weights.common import StateDict, assign, load_batchnorm, load_linear


def load_linear_block(sd: StateDict, prefix: str, block: LinearBlock) -> None:
  """``{prefix}.fc`` + ``{prefix}.bn`` (official LinearBlock)."""
  load_linear(sd, prefix + ".fc", block.fc)
  load_batchnorm(sd, prefix + ".bn", block.bn)


def load_afg(sd: StateDict, prefix: str, afg: AFG) -> None:
  """Stacks the N official ``{prefix}.{i}`` LinearBlocks into the batched AFG."""
  n = afg.num_aus
  present = {
    int(k[len(prefix) + 1 :].split(".")[0])
    for k in sd.tensors
    if k.startswith(prefix + ".") and k[len(prefix) + 1 :].split(".")[0].isdigit()
  }
  if present != set(range(n)):
    raise ValueError(
      f"{sd.source}: '{prefix}' holds AU blocks {sorted(present)}, the model has N={n} "
      f"(0..{n - 1}); pass the checkpoint's number of AUs as num_aus"
    )
  take = lambda i, s: sd.take(f"{prefix}.{i}.{s}")
  stack = lambda s, f=lambda a: a: np.stack([f(take(i, s)) for i in range(n)])
  assign(afg.kernel, stack("fc.weight", lambda w: w.T), f"{prefix}.*.fc.weight", sd.source)
  assign(afg.bias, stack("fc.bias"), f"{prefix}.*.fc.bias", sd.source)
  assign(afg.bn.scale, stack("bn.weight"), f"{prefix}.*.bn.weight", sd.source)
  assign(afg.bn.bias, stack("bn.bias"), f"{prefix}.*.bn.bias", sd.source)
  assign(afg.bn.mean, stack("bn.running_mean"), f"{prefix}.*.bn.running_mean", sd.source)
  assign(afg.bn.var, stack("bn.running_var"), f"{prefix}.*.bn.running_var", sd.source)
  sd.skip([f"{prefix}.{i}.bn.num_batches_tracked" for i in range(n)])


def load_sc(sd: StateDict, key: str, sc: SCHead) -> None:
  assign(sc.sc, sd.take(key), key, sd.source)


def load_fgg(sd: StateDict, prefix: str, fgg: FGG) -> None:
  """Stage-1 GNN: ``{prefix}.U``, ``.V``, ``.bnv``."""
  load_linear(sd, prefix + ".U", fgg.U)
  load_linear(sd, prefix + ".V", fgg.V)
  load_batchnorm(sd, prefix + ".bnv", fgg.bnv)


def load_mefl(sd: StateDict, prefix: str, mefl: MEFL) -> None:
  """GEM: ``{prefix}.FAM``, ``.ARM`` (linear_q/k/v), ``.edge_proj``, ``.bn``."""
  for name in ("FAM", "ARM"):
    attn = getattr(mefl, name)
    for lin in ("linear_q", "linear_k", "linear_v"):
      load_linear(sd, f"{prefix}.{name}.{lin}", getattr(attn, lin))
  load_linear(sd, prefix + ".edge_proj", mefl.edge_proj)
  load_batchnorm(sd, prefix + ".bn", mefl.bn)


def load_gated_gcn(sd: StateDict, prefix: str, gnn: GatedGCN) -> None:
  """Stage-2 GNN: ``{prefix}.{U,V,A,B,E}{l}`` and ``.bnv{l}``, ``.bne{l}`` for layer l = 1, 2."""
  for li, layer in enumerate(gnn.layers, start=1):
    for lin in ("U", "V", "A", "B", "E"):
      load_linear(sd, f"{prefix}.{lin}{li}", getattr(layer, lin))
    load_batchnorm(sd, f"{prefix}.bnv{li}", layer.bnv)
    load_batchnorm(sd, f"{prefix}.bne{li}", layer.bne)


def load_head(sd: StateDict, model, stage: int) -> None:
  """``global_linear.*`` and ``head.*`` of an official checkpoint into a Stage1Model/Stage2Model."""
  load_linear_block(sd, "global_linear", model.global_linear)
  load_afg(sd, "head.class_linears", model.afg)
  load_sc(sd, "head.sc", model.sc)
  if stage == 1:
    if model.fgg is not None:  # a stage 1 trained with use_fgg=False has no head.gnn
      load_fgg(sd, "head.gnn", model.fgg)
  else:
    load_mefl(sd, "head.edge_extractor", model.mefl)
    load_gated_gcn(sd, "head.gnn", model.gnn)
    load_linear(sd, "head.edge_fc", model.edge_fc)
