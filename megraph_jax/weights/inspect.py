"""Which backbone an official state_dict holds, read from its tensor names and shapes."""

from __future__ import annotations

import re

import numpy as np

# (block kind, blocks per stage) -> name, as torchvision's ResNets.
_RESNETS = {
  ("basic", (2, 2, 2, 2)): "resnet18",
  ("basic", (3, 4, 6, 3)): "resnet34",
  ("bottleneck", (3, 4, 6, 3)): "resnet50",
  ("bottleneck", (3, 4, 23, 3)): "resnet101",
}
# (embed dim, depth) -> name, as OpenGraphAU's MAE encoder.
_VITS = {(768, 12): "mae_base_patch16_224"}
# (embed dim, blocks per stage) -> name, as the official Swin configs.
_SWINS = {
  (96, (2, 2, 6, 2)): "swin_transformer_tiny",
  (96, (2, 2, 18, 2)): "swin_transformer_small",
  (128, (2, 2, 18, 2)): "swin_transformer_base",
}


def _blocks_per_stage(tensors: dict[str, np.ndarray], pattern: str) -> tuple[int, ...]:
  counts: dict[int, set[int]] = {}
  for key in tensors:
    m = re.match(pattern, key)
    if m:
      counts.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
  return tuple(len(counts[s]) for s in sorted(counts))


def infer_backbone(tensors: dict[str, np.ndarray], *, prefix: str = "backbone.", source: str = "<state_dict>") -> str:
  """The backbone name (``resnet50``, ``swin_transformer_base``, ...) of an official state_dict."""
  p = re.escape(prefix)
  if prefix + "conv1.weight" in tensors:
    kind = "bottleneck" if any(re.match(p + r"layer\d+\.\d+\.conv3\.weight$", k) for k in tensors) else "basic"
    blocks = _blocks_per_stage(tensors, p + r"layer(\d+)\.(\d+)\.conv1\.weight$")
    name = _RESNETS.get((kind, blocks))
    what = f"a {kind}-block ResNet with {blocks} blocks per stage"
  elif prefix + "patch_embed.proj.weight" in tensors:
    dim = int(tensors[prefix + "patch_embed.proj.weight"].shape[0])
    blocks = _blocks_per_stage(tensors, p + r"layers\.(\d+)\.blocks\.(\d+)\.norm1\.weight$")
    name = _SWINS.get((dim, blocks))
    what = f"a Swin with embed dim {dim} and {blocks} blocks per stage"
  elif prefix + "encoder.patch_embed.proj.weight" in tensors:
    dim = int(tensors[prefix + "encoder.patch_embed.proj.weight"].shape[0])
    depth = len({m.group(1) for k in tensors if (m := re.match(p + r"encoder\.blocks\.(\d+)\.", k))})
    name = _VITS.get((dim, depth))
    what = f"a ViT encoder with embed dim {dim} and {depth} blocks"
  else:
    raise ValueError(
      f"{source}: no '{prefix}conv1.weight', '{prefix}patch_embed.proj.weight' or "
      f"'{prefix}encoder.patch_embed.proj.weight' key: not an ME-GraphAU / OpenGraphAU checkpoint with a ResNet, "
      "Swin or MAE ViT backbone; pass --backbone if it is one"
    )
  if name is None:
    known = ", ".join(list(_RESNETS.values()) + list(_SWINS.values()) + list(_VITS.values()))
    raise ValueError(f"{source}: holds {what}, which is none of {known}; pass --backbone")
  return name
