"""Official (Microsoft release) Swin Transformer state_dict -> our ``SwinTransformer``."""

from __future__ import annotations

import os

import numpy as np

from megraph_jax.models.swin import SwinTransformer, relative_position_index
from megraph_jax.torch_io import load_pth
from megraph_jax.weights.common import StateDict, assign, load_conv, load_layernorm, load_linear


def _check_layout(sd: StateDict, p: str, model: SwinTransformer) -> None:
  """Refuses timm's layout (downsample at the start of stages 1..3) with a clear message."""
  if model.num_layers < 2:
    return
  ours = p + "layers.0.downsample.reduction.weight"
  timm = p + "layers.1.downsample.reduction.weight"
  last = p + f"layers.{model.num_layers - 1}.downsample.norm.weight"
  if ours not in sd.tensors and timm in sd.tensors and last in sd.tensors:
    raise KeyError(
      f"{sd.source}: missing key '{ours}' but '{timm}' and a last-stage downsample exist: "
      "this looks like timm's Swin layout (downsample starts a stage); convert it to the "
      "official layout (layers.{i}.downsample -> layers.{i-1}.downsample) first"
    )


def load_swin(sd: StateDict, prefix: str, model: SwinTransformer) -> None:
  """Copies ``{prefix}patch_embed.*, layers.*, norm.*`` into ``model``, checking every shape.

  ``relative_position_index`` buffers, where present, must equal ours; ``attn_mask`` buffers are consumed
  and ignored (we rebuild both). Leftover Swin keys under the prefix (e.g. a deeper checkpoint) raise.
  """
  p = prefix + "." if prefix and not prefix.endswith(".") else prefix
  _check_layout(sd, p, model)
  load_conv(sd, p + "patch_embed.proj", model.patch_embed.proj)
  load_layernorm(sd, p + "patch_embed.norm", model.patch_embed.norm)
  for i, layer in enumerate(model.layers):
    for j, block in enumerate(layer.blocks):
      b = f"{p}layers.{i}.blocks.{j}."
      load_layernorm(sd, b + "norm1", block.norm1)
      load_linear(sd, b + "attn.qkv", block.attn.qkv)
      load_linear(sd, b + "attn.proj", block.attn.proj)
      key = b + "attn.relative_position_bias_table"
      assign(block.attn.relative_position_bias_table, sd.take(key), key, sd.source)
      key = b + "attn.relative_position_index"
      if key in sd.tensors:
        theirs = sd.take(key)
        if not np.array_equal(np.asarray(theirs), relative_position_index(block.attn.window)):
          raise ValueError(
            f"{sd.source}: key '{key}' (shape {tuple(theirs.shape)}) differs from the "
            f"relative position index of a {block.attn.window}x{block.attn.window} window"
          )
      sd.skip([b + "attn_mask"])
      load_layernorm(sd, b + "norm2", block.norm2)
      load_linear(sd, b + "mlp.fc1", block.mlp.fc1)
      load_linear(sd, b + "mlp.fc2", block.mlp.fc2)
    if layer.downsample is not None:
      d = f"{p}layers.{i}.downsample."
      load_layernorm(sd, d + "norm", layer.downsample.norm)
      load_linear(sd, d + "reduction", layer.downsample.reduction)
  load_layernorm(sd, p + "norm", model.norm)
  left = [k for k in sd.unused(p) if k[len(p) :].startswith(("patch_embed.", "layers.", "norm.", "absolute_pos_embed"))]
  if left:
    raise KeyError(
      f"{sd.source}: {len(left)} Swin key(s) not used by this model "
      f"(depths {model.depths}, embed_dim {model.embed_dim}): {left[:10]}"
    )


def load_swin_imagenet(path: str | os.PathLike, model: SwinTransformer) -> None:
  """Loads an official Swin ImageNet ``.pth`` (``{'model': state_dict}``); ``head.*`` is ignored."""
  tensors = load_pth(path)
  sd = StateDict(tensors, source=os.fspath(path))
  sd.skip([k for k in tensors if k.startswith("head.")])
  load_swin(sd, "", model)
  sd.check_all_used()
