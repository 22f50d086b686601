"""Models from a config, and their initialisation: ImageNet backbone, a stage-1 checkpoint, an official .pth."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from megraph_jax import checkpointing
from megraph_jax.models.megraph import SHARED_SUBMODULES, BaselineModel, Stage1Model, Stage2Model

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def compute_dtype(name: str) -> Any:
  if name not in DTYPES:
    raise ValueError(f"config key 'model.dtype' = {name!r}; choose one of {sorted(DTYPES)}")
  if name == "float64" and not jax.config.jax_enable_x64:
    raise ValueError("config key 'model.dtype' = 'float64' needs 64-bit JAX: set JAX_ENABLE_X64=1")
  return DTYPES[name]


def model_json(config: ml_collections.ConfigDict, stage: int) -> dict[str, Any]:
  """Constructor arguments of the model of ``stage`` (stored as model.json next to its checkpoints)."""
  m = config.model
  cfg = {"backbone": m.backbone, "num_aus": config.dataset.num_aus, "stage": stage,
         "img_size": config.dataset.crop_size, "au_names": list(config.dataset.au_names)}
  if m.head not in ("megraph", "baseline"):
    raise ValueError(f"config key 'model.head' = {m.head!r}; choose 'megraph' or 'baseline'")
  if m.head == "baseline":
    if stage != 1:
      raise ValueError("config key 'model.head' = 'baseline' (backbone + linear classifier) has only one stage; "
                       "use --config.mode=stage1")
    cfg.update(head="baseline")
  elif stage == 1:
    cfg.update(neighbor_num=m.neighbor_num, metric=m.metric, use_fgg=m.use_fgg)
  else:
    cfg.update(gnn_layers=m.gnn_layers)
  return cfg


def build_from_json(cfg: dict[str, Any], *, seed: int = 0, dtype: Any = jnp.float32,
                    drop_path_rate: float | None = None) -> Stage1Model | Stage2Model:
  """A freshly initialised model from ``model_json``-style arguments."""
  rngs = nnx.Rngs(params=seed, dropout=seed + 1)
  param_dtype = jnp.float64 if dtype == jnp.float64 else jnp.float32  # float64 only as a numerics check
  common = dict(img_size=cfg.get("img_size", 224), drop_path_rate=drop_path_rate, dtype=dtype,
                param_dtype=param_dtype, rngs=rngs)
  if cfg.get("head") == "baseline":
    return BaselineModel(cfg["backbone"], cfg["num_aus"], **common)
  if cfg["stage"] == 1:
    return Stage1Model(cfg["backbone"], cfg["num_aus"], neighbor_num=cfg.get("neighbor_num", 4),
                       metric=cfg.get("metric", "dots"), use_fgg=cfg.get("use_fgg", True), **common)
  if cfg["stage"] == 2:
    return Stage2Model(cfg["backbone"], cfg["num_aus"], gnn_layers=cfg.get("gnn_layers", 2), **common)
  raise ValueError(f"model.json: stage must be 1 or 2, got {cfg['stage']!r}")


def build_model(config: ml_collections.ConfigDict, stage: int) -> Stage1Model | Stage2Model:
  """The model of ``stage`` as the config describes it, randomly initialised from ``config.seed``."""
  if config.dataset.num_aus != len(config.dataset.au_names):
    raise ValueError(f"config: dataset.num_aus = {config.dataset.num_aus} but dataset.au_names has "
                     f"{len(config.dataset.au_names)} names; make them agree")
  model = build_from_json(model_json(config, stage), seed=config.seed, dtype=compute_dtype(config.model.dtype),
                          drop_path_rate=config.model.drop_path_rate)
  if hasattr(model, "set_remat"):
    model.set_remat(bool(config.model.remat))
  elif config.model.remat:
    model.set_attributes(remat=True, raise_if_not_found=False)
  return model


def _stage_dir_of(path: str) -> str | None:
  """The stage directory (holding model.json) of ``path`` or of its parent (``.../best``)."""
  for d in (path, os.path.dirname(path.rstrip("/"))):
    if os.path.isfile(os.path.join(d, checkpointing.MODEL_JSON)) and (
        os.path.isdir(os.path.join(d, "best")) or os.path.isdir(os.path.join(d, "checkpoints"))):
      return d
  return None


def load_pretrained(path: str, config: ml_collections.ConfigDict) -> Stage1Model | Stage2Model:
  """Loads a trained model: our stage dir (or its best/ or checkpoints/), a convert dir, or an official .pth."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such checkpoint (config key 'checkpoint' or 'init_from')")
  if path.endswith(".pth"):
    from megraph_jax import convert  # pylint: disable=import-outside-toplevel
    from megraph_jax.torch_io import load_pth  # pylint: disable=import-outside-toplevel
    tensors = load_pth(path)
    stage = convert.describe_official(tensors)["stage"] or 1
    model = build_from_json(model_json(config, stage))
    convert.load_official_state_dict(model, tensors, stage=stage, source=path)
    return model
  stage_dir = _stage_dir_of(path)
  if stage_dir is not None:
    cfg = checkpointing.read_model_json(stage_dir)
    which = "latest" if os.path.basename(path.rstrip("/")) == "checkpoints" else "best"
    abstract = nnx.eval_shape(lambda: build_from_json(cfg))
    graphdef, abstract_state = nnx.split(abstract)
    _, state = checkpointing.restore_model_state(stage_dir, abstract_state, which=which)
    return nnx.merge(graphdef, state)
  if os.path.isfile(os.path.join(path, "model.json")) and os.path.isdir(os.path.join(path, "state")):
    from megraph_jax import convert  # pylint: disable=import-outside-toplevel
    return convert.load_model(path)
  raise ValueError(f"{path}: not a checkpoint megraph-jax can read; expected an official .pth, a stage "
                   "directory <workdir>/fold<k>/stage<s> (or its best/ or checkpoints/), or a directory "
                   "written by python -m megraph_jax.convert")


def copy_weights(target: Stage1Model | Stage2Model, source: Stage1Model | Stage2Model) -> None:
  """Same stage: every variable; across stages: backbone, global_linear, AFG and SC (the official resume)."""
  if (source.backbone_name, source.num_aus) != (target.backbone_name, target.num_aus):
    raise ValueError(f"initial checkpoint is {source.backbone_name} with {source.num_aus} AUs; the config "
                     f"trains {target.backbone_name} with {target.num_aus} (config keys model.backbone, "
                     "dataset.num_aus)")
  names = None if type(source) is type(target) else SHARED_SUBMODULES
  if names is None:
    nnx.update(target, nnx.state(source, nnx.Param, nnx.BatchStat))
  else:
    for name in names:
      nnx.update(getattr(target, name), nnx.state(getattr(source, name)))


def init_backbone_from_imagenet(model: Stage1Model | Stage2Model, path: str) -> None:
  """ImageNet weights into the backbone (torchvision ResNet / official Swin .pth)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config key 'model.imagenet_weights' = {path!r}: no such file; download it "
                            "yourself (nothing is downloaded) or set it to '' for a random initialisation")
  from megraph_jax.convert import init_backbone_from_imagenet as load  # pylint: disable=import-outside-toplevel
  load(model, path)
