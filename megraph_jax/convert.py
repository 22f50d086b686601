"""Official ME-GraphAU / ImageNet ``.pth`` -> our models, and our own orbax model checkpoints.

CLI: ``python -m megraph_jax.convert OFFICIAL.pth OUT_DIR --backbone resnet50 --num-aus 12 --stage 2``
writes an orbax checkpoint (``OUT_DIR/state`` + ``OUT_DIR/model.json``) that training
(``config.init_from``) and prediction load with :func:`load_model`.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from megraph_jax.models.backbones import RESNETS, SWINS
from megraph_jax.models.megraph import Stage1Model, Stage2Model
from megraph_jax.torch_io import load_pth
from megraph_jax.weights.common import StateDict
from megraph_jax.weights.megraph import load_head

MODEL_JSON = "model.json"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(backbone: str, num_aus: int, stage: int, *, neighbor_num: int = 4, metric: str = "dots",
                img_size: int = 224, dtype: Any = jnp.float32, seed: int = 0) -> Stage1Model | Stage2Model:
  """A freshly initialised Stage1Model or Stage2Model."""
  rngs = nnx.Rngs(params=seed, dropout=seed + 1)
  if stage == 1:
    return Stage1Model(backbone, num_aus, neighbor_num=neighbor_num, metric=metric, img_size=img_size,
                       dtype=dtype, rngs=rngs)
  if stage == 2:
    return Stage2Model(backbone, num_aus, img_size=img_size, dtype=dtype, rngs=rngs)
  raise ValueError(f"stage must be 1 or 2, got {stage!r}")


def describe_official(tensors: dict[str, np.ndarray]) -> dict[str, Any]:
  """What an official state_dict holds: stage, number of AUs and backbone family (for error messages)."""
  info: dict[str, Any] = {"stage": None, "num_aus": None, "backbone": None}
  if "head.sc" in tensors:
    info["num_aus"] = int(tensors["head.sc"].shape[0])
  if "head.edge_fc.weight" in tensors or any(k.startswith("head.edge_extractor.") for k in tensors):
    info["stage"] = 2
  elif "head.gnn.U.weight" in tensors:
    info["stage"] = 1
  if "backbone.patch_embed.proj.weight" in tensors:
    info["backbone"] = "swin"
  elif "backbone.conv1.weight" in tensors:
    info["backbone"] = "resnet"
  return info


def _load_backbone(sd: StateDict, prefix: str, model) -> None:
  if model.backbone_name in RESNETS:
    from megraph_jax.weights.resnet import load_resnet  # pylint: disable=import-outside-toplevel
    load_resnet(sd, prefix, model.backbone)
  elif model.backbone_name in SWINS:
    from megraph_jax.weights.swin import load_swin  # pylint: disable=import-outside-toplevel
    load_swin(sd, prefix, model.backbone)
  else:  # pragma: no cover - build_backbone already refused it
    raise ValueError(f"unknown backbone {model.backbone_name}")


def load_official_state_dict(model: Stage1Model | Stage2Model, tensors: dict[str, np.ndarray], *,
                             stage: int, source: str = "<state_dict>") -> None:
  """Maps every tensor of an official state_dict onto ``model``; missing/unexpected/mis-shaped keys raise."""
  info = describe_official(tensors)
  want_family = "resnet" if model.backbone_name in RESNETS else "swin"
  problems = []
  if info["stage"] is not None and info["stage"] != stage:
    problems.append(f"it is a stage-{info['stage']} checkpoint but stage={stage} was asked for")
  if info["num_aus"] is not None and info["num_aus"] != model.num_aus:
    problems.append(f"it holds {info['num_aus']} AUs but num_aus={model.num_aus}")
  if info["backbone"] is not None and info["backbone"] != want_family:
    problems.append(f"its backbone is a {info['backbone']} but backbone='{model.backbone_name}'")
  if problems:
    raise ValueError(f"{source}: " + "; ".join(problems))
  sd = StateDict(tensors, source=source)
  _load_backbone(sd, "backbone.", model)
  load_head(sd, model, stage)
  sd.check_all_used()


def from_official(path: str | os.PathLike, *, backbone: str, num_aus: int, stage: int, neighbor_num: int = 4,
                  metric: str = "dots", img_size: int = 224, dtype: Any = jnp.float32
                  ) -> Stage1Model | Stage2Model:
  """Loads an official ME-GraphAU checkpoint (``{'state_dict': ...}``, ``module.`` prefix or not).

  Returns the model in eval mode: ``model(images)['au_probs']`` ``[B, N]`` and, for stage 2,
  ``['edge_logits']`` ``[B, N*N, 4]`` in the official edge order. The file is read with
  ``torch.load(weights_only=True)``.
  """
  model = build_model(backbone, num_aus, stage, neighbor_num=neighbor_num, metric=metric, img_size=img_size,
                      dtype=dtype)
  load_official_state_dict(model, load_pth(path), stage=stage, source=os.fspath(path))
  model.eval()
  return model


def init_backbone_from_imagenet(model: Stage1Model | Stage2Model, path: str | os.PathLike) -> None:
  """Loads ImageNet weights into ``model.backbone``: a torchvision ResNet or official Swin ``.pth``."""
  if model.backbone_name in RESNETS:
    from megraph_jax.weights.resnet import load_torchvision_imagenet  # pylint: disable=import-outside-toplevel
    load_torchvision_imagenet(path, model.backbone)
  else:
    from megraph_jax.weights.swin import load_swin_imagenet  # pylint: disable=import-outside-toplevel
    load_swin_imagenet(path, model.backbone)


def model_config(model: Stage1Model | Stage2Model, *, au_names: list[str] | None = None) -> dict[str, Any]:
  """The constructor arguments that rebuild ``model`` (stored next to its weights)."""
  stage = 1 if isinstance(model, Stage1Model) else 2
  cfg = {"backbone": model.backbone_name, "num_aus": model.num_aus, "stage": stage,
         "img_size": model.img_size}
  if stage == 1:
    cfg.update(neighbor_num=model.fgg.neighbor_num, metric=model.fgg.metric)
  if au_names is not None:
    if len(au_names) != model.num_aus:
      raise ValueError(f"{len(au_names)} AU names for a model of {model.num_aus} AUs")
    cfg["au_names"] = list(au_names)
  return cfg


def save_model(model: Stage1Model | Stage2Model, directory: str | os.PathLike, *,
               au_names: list[str] | None = None) -> str:
  """Writes ``directory/state`` (orbax) and ``directory/model.json``; returns the directory."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  directory = os.path.abspath(os.fspath(directory))
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, "state"), nnx.state(model), force=True)
  with open(os.path.join(directory, MODEL_JSON), "w") as f:
    json.dump(model_config(model, au_names=au_names), f, indent=2)
  return directory


def load_model(directory: str | os.PathLike, *, dtype: Any = jnp.float32) -> Stage1Model | Stage2Model:
  """Rebuilds a model saved by :func:`save_model` (eval mode)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  directory = os.path.abspath(os.fspath(directory))
  cfg_path = os.path.join(directory, MODEL_JSON)
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{cfg_path}: missing; not a megraph-jax model checkpoint "
                            "(write one with python -m megraph_jax.convert)")
  with open(cfg_path) as f:
    cfg = json.load(f)
  kw = {k: cfg[k] for k in ("neighbor_num", "metric") if k in cfg}
  abstract = nnx.eval_shape(lambda: build_model(cfg["backbone"], cfg["num_aus"], cfg["stage"],
                                                img_size=cfg.get("img_size", 224), dtype=dtype, **kw))
  graphdef, abstract_state = nnx.split(abstract)
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(os.path.join(directory, "state"), abstract_state)
  model = nnx.merge(graphdef, state)
  model.eval()
  return model


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m megraph_jax.convert",
      description="Convert an official ME-GraphAU .pth into a megraph-jax orbax checkpoint.")
  parser.add_argument("checkpoint", help="official .pth ({'state_dict': ...})")
  parser.add_argument("out", help="output directory")
  parser.add_argument("--backbone", required=True, choices=RESNETS + SWINS)
  parser.add_argument("--num-aus", type=int, default=None, help="default: read from the checkpoint")
  parser.add_argument("--stage", type=int, choices=(1, 2), default=None, help="default: read from the checkpoint")
  parser.add_argument("--neighbor-num", type=int, default=4, help="K of the stage-1 FGG (BP4D 4, DISFA 3)")
  parser.add_argument("--metric", default="dots", choices=("dots", "cosine", "l1"))
  parser.add_argument("--img-size", type=int, default=224)
  parser.add_argument("--au-names", default=None, help="comma-separated, e.g. AU1,AU2,... (stored in model.json)")
  args = parser.parse_args(argv)
  tensors = load_pth(args.checkpoint)
  info = describe_official(tensors)
  num_aus = args.num_aus or info["num_aus"]
  stage = args.stage or info["stage"]
  if num_aus is None or stage is None:
    parser.error(f"{args.checkpoint}: cannot tell the number of AUs / stage; pass --num-aus and --stage")
  model = build_model(args.backbone, num_aus, stage, neighbor_num=args.neighbor_num, metric=args.metric,
                      img_size=args.img_size)
  load_official_state_dict(model, tensors, stage=stage, source=args.checkpoint)
  au_names = args.au_names.split(",") if args.au_names else None
  out = save_model(model, args.out, au_names=au_names)
  print(f"wrote {out} (stage {stage}, {args.backbone}, {num_aus} AUs)")


if __name__ == "__main__":
  main()
