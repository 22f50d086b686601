"""torchvision / official ME-GraphAU ResNet state_dicts -> our NNX ``ResNet``."""

from __future__ import annotations

import os

from megraph_jax.models.resnet import ResNet
from megraph_jax.torch_io import load_pth
from megraph_jax.weights.common import StateDict, load_batchnorm, load_conv


def load_resnet(sd: StateDict, prefix: str, model: ResNet) -> None:
  """Loads ``{prefix}conv1/bn1/layer*.…`` into ``model`` with shape checks; ``fc.*`` is left alone."""
  load_conv(sd, f"{prefix}conv1", model.conv1)
  load_batchnorm(sd, f"{prefix}bn1", model.bn1)
  for li in range(1, 5):
    for bi, blk in enumerate(getattr(model, f"layer{li}")):
      p = f"{prefix}layer{li}.{bi}."
      n_convs = 3 if hasattr(blk, "conv3") else 2
      for ci in range(1, n_convs + 1):
        load_conv(sd, f"{p}conv{ci}", getattr(blk, f"conv{ci}"))
        load_batchnorm(sd, f"{p}bn{ci}", getattr(blk, f"bn{ci}"))
      if blk.downsample is not None:
        load_conv(sd, f"{p}downsample.0", blk.downsample[0])
        load_batchnorm(sd, f"{p}downsample.1", blk.downsample[1])


def load_torchvision_imagenet(path: str | os.PathLike, model: ResNet) -> None:
  """Loads a torchvision ImageNet ``.pth`` (bare state_dict) into ``model``, ignoring ``fc.*``."""
  sd = StateDict(load_pth(path), source=os.fspath(path))
  load_resnet(sd, "", model)
  sd.skip(["fc.weight", "fc.bias"])
  sd.check_all_used()
