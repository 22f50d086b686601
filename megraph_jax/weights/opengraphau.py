"""Official OpenGraphAU keys (``global_linear.*``, ``head.*``, the MAE ``backbone.encoder.*``) -> our models."""

from __future__ import annotations

from megraph_jax.models.opengraphau import OpenGraphAUStage1, OpenGraphAUStage2
from megraph_jax.models.vit import MAEEncoder
from megraph_jax.weights.common import StateDict, assign, load_batchnorm, load_conv, load_layernorm, load_linear
from megraph_jax.weights.megraph import load_afg, load_fgg, load_linear_block, load_mefl, load_sc


def load_opengraphau_head(sd: StateDict, model: OpenGraphAUStage1 | OpenGraphAUStage2) -> None:
  """``global_linear``, ``head.main_class_linears`` (AFG), ``head.main_sc``, ``head.sub_sc`` and the stage's graph:
  ``head.gnn.{U,V,bnv}`` (stage 1) or ``head.edge_extractor.*`` + ``head.gnn.graph_layers.{l}.*`` (stage 2)."""
  load_linear_block(sd, "global_linear", model.global_linear)
  load_afg(sd, "head.main_class_linears", model.afg)
  load_sc(sd, "head.main_sc", model.sc.main_sc)
  load_sc(sd, "head.sub_sc", model.sc.sub_sc)
  if model.STAGE == 1:
    load_fgg(sd, "head.gnn", model.fgg)
    return
  load_mefl(sd, "head.edge_extractor", model.mefl)
  for li, layer in enumerate(model.gnn.layers):
    p = f"head.gnn.graph_layers.{li}"
    for lin in ("U", "V", "A", "B", "E"):
      load_linear(sd, f"{p}.{lin}", getattr(layer, lin))
    load_batchnorm(sd, f"{p}.bnv", layer.bnv)
    load_batchnorm(sd, f"{p}.bne", layer.bne)


def load_mae(sd: StateDict, prefix: str, model: MAEEncoder) -> None:
  """``{prefix}patch_embed.proj``, ``blocks.{i}.*`` (qkv without bias, ``q_bias``/``v_bias``) and ``norm``."""
  load_conv(sd, prefix + "patch_embed.proj", model.patch_embed)
  for i, blk in enumerate(model.blocks):
    b = f"{prefix}blocks.{i}."
    load_layernorm(sd, b + "norm1", blk.norm1)
    load_linear(sd, b + "attn.qkv", blk.attn.qkv)
    for name in ("q_bias", "v_bias"):
      assign(getattr(blk.attn, name), sd.take(b + "attn." + name), b + "attn." + name, sd.source)
    load_linear(sd, b + "attn.proj", blk.attn.proj)
    load_layernorm(sd, b + "norm2", blk.norm2)
    load_linear(sd, b + "mlp.fc1", blk.mlp.fc1)
    load_linear(sd, b + "mlp.fc2", blk.mlp.fc2)
  load_layernorm(sd, prefix + "norm", model.norm)
