"""Initial weights of a training stage: ImageNet backbone, a stage-1 checkpoint, an official .pth.

Models are built by :mod:`megraph_jax.model_factory` and checkpoints read by :mod:`megraph_jax.loader`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from flax import nnx

from megraph_jax import loader
from megraph_jax.errors import CheckpointError, ConfigError, ImageNetWeightsError
from megraph_jax.model_factory import Model
from megraph_jax.models.megraph import Stage1Model, Stage2Model
from megraph_jax.models.trunk import init_stage2_from_stage1
from megraph_jax.torch_io import load_pth

if TYPE_CHECKING:  # a type only: the GPU image without ml_collections imports this module
  import ml_collections


def checkpoint_hints(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What an official ``.pth`` does not hold, from the config (:func:`megraph_jax.loader.load`'s ``official``)."""
  m = config.model
  return dict(backbone=m.backbone, neighbor_num=m.neighbor_num, metric=m.metric, img_size=config.dataset.crop_size)


def load_for_config(path: str, config: ml_collections.ConfigDict) -> Model:
  """A trained model (:func:`megraph_jax.loader.load`), in the config's dtype, for evaluation or initialisation."""
  try:
    model, _ = loader.load(path, dtype=config.model.dtype, **checkpoint_hints(config))
  except CheckpointError:
    raise
  except ValueError as e:  # named missing / unexpected / mis-shaped keys: the file does not fit the config
    raise CheckpointError(str(e)) from e
  return model


def copy_weights(target: Model, source: Model) -> None:
  """Same stage: every variable; stage 1 -> stage 2: ``init_stage2_from_stage1`` (the official resume; ME-GraphAU's
  or OpenGraphAU's)."""
  if (source.backbone_name, source.num_aus) != (target.backbone_name, target.num_aus):
    raise CheckpointError(
      f"initial checkpoint is {source.backbone_name} with {source.num_aus} AUs; the config "
      f"trains {target.backbone_name} with {target.num_aus} (config keys model.backbone, "
      "dataset.au_names)"
    )
  if (source.HEAD, source.STAGE) == (target.HEAD, target.STAGE):
    nnx.update(target, nnx.state(source, nnx.Any(nnx.Param, nnx.BatchStat)))
  elif source.HEAD == target.HEAD and (source.STAGE, target.STAGE) == (1, 2):  # ME-GraphAU's or OpenGraphAU's
    init_stage2_from_stage1(target, source)
  else:
    raise CheckpointError(f"cannot initialise a {type(target).__name__} from a {type(source).__name__} checkpoint")


# The ImageNet files the official code loads from its checkpoints/ folder (model/resnet.py, model/swin_transformer.py),
# then torchvision's current names of the same ResNet weights.
IMAGENET_FILES = {
  "resnet18": ("resnet18-5c106cde.pth", "resnet18-f37072fd.pth"),
  "resnet34": ("resnet34-333f7ec4.pth", "resnet34-b627a593.pth"),
  "resnet50": ("resnet50-19c8e357.pth", "resnet50-0676ba61.pth"),
  "resnet101": ("resnet101-5d3b4d8f.pth", "resnet101-63fe2227.pth"),
  "swin_transformer_tiny": ("swin_tiny_patch4_window7_224.pth",),
  "swin_transformer_small": ("swin_small_patch4_window7_224.pth",),
  "swin_transformer_base": ("swin_base_patch4_window7_224.pth",),
}
INITS = ("imagenet", "random")


def imagenet_weights_file(path: str, backbone: str) -> str:
  """The ImageNet ``.pth`` for ``backbone``: ``path`` itself, or the official file name inside folder ``path``."""
  names = IMAGENET_FILES[backbone]
  hint = (
    f"The official recipe starts {backbone} from ImageNet weights ({names[0]}, the file the official code "
    f"reads from its checkpoints/ folder{'; torchvision names it ' + names[1] if len(names) > 1 else ''}). "
    "Nothing is downloaded: put the file there, point --config.model.imagenet_weights at the file or at "
    "the folder holding it, or train from a random initialisation on purpose with --config.model.init=random."
  )
  if not path:
    raise ImageNetWeightsError(f"config key 'model.imagenet_weights' is empty. {hint}")
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    for name in names:
      if os.path.isfile(os.path.join(path, name)):
        return os.path.join(path, name)
    raise ImageNetWeightsError(
      f"config key 'model.imagenet_weights' = {path!r}: the folder holds none of {', '.join(names)}. {hint}"
    )
  if not os.path.isfile(path):
    raise ImageNetWeightsError(f"config key 'model.imagenet_weights' = {path!r}: no such file or folder. {hint}")
  return path


def init_stage_weights(
  model: Stage1Model | Stage2Model, config: ml_collections.ConfigDict, init_from: str | None
) -> str:
  """Initial weights of a fresh stage: ``init_from`` if given, else per ``model.init``; returns what was used."""
  if init_from:
    copy_weights(model, load_for_config(init_from, config))
    return os.path.abspath(init_from)
  if config.model.init == "imagenet":
    path = imagenet_weights_file(config.model.imagenet_weights, model.backbone_name)
    try:
      loader.init_backbone_from_imagenet(model, path)
    except CheckpointError as e:  # e.g. a pickle that would run code: refused, nothing in it ran
      raise ImageNetWeightsError(f"config key 'model.imagenet_weights': {e}") from None
    return f"ImageNet weights {path}"
  if config.model.init == "random":
    return f"a random initialisation (seed {config.seed}; config model.init='random')"
  raise ConfigError(f"config key 'model.init' = {config.model.init!r}; choose one of {INITS}")


def checkpoint_aus(path: str) -> tuple[int | None, list[str] | None]:
  """(number of AUs, AU names or None) a checkpoint was trained for, read without building the model."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isfile(path):
    return loader.official_info(load_pth(path))["num_aus"], None
  spec = loader.stored_spec(path)
  return (None, None) if spec is None else (spec.num_aus, None if spec.au_names is None else list(spec.au_names))
