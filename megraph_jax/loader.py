"""One loader for every checkpoint the project knows: :func:`load` ``(path, dtype=...) -> (model, spec)``.

Readable: an official ME-GraphAU or OpenGraphAU ``.pth`` (spec read from its tensor names: model family, backbone,
stage, number of AUs, FGG or not), a training stage directory ``<workdir>/fold<k>/stage<s>`` (its ``best/`` by
default), its ``best/`` or ``checkpoints/`` (the latest) folder, and a directory written by :func:`save`
(``model.json`` + ``state/``, what ``python -m megraph_jax.convert`` writes). ImageNet backbone weights load here too.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from megraph_jax import checkpointing, stage_dirs
from megraph_jax.errors import CheckpointError, CheckpointNotFoundError
from megraph_jax.model_factory import Model, ModelSpec, build, dtype_name, eval_view
from megraph_jax.stage_dirs import MODEL_JSON
from megraph_jax.torch_io import load_pth
from megraph_jax.weights.common import StateDict
from megraph_jax.weights.inspect import infer_backbone
from megraph_jax.weights.megraph import load_head
from megraph_jax.weights.opengraphau import load_mae, load_opengraphau_head
from megraph_jax.weights.resnet import load_resnet, load_torchvision_imagenet
from megraph_jax.weights.swin import load_swin, load_swin_imagenet

STATE = "state"  # orbax folder of a saved model, beside its model.json
KINDS = (
  "an official .pth, a stage directory <workdir>/fold<k>/stage<s> (or its best/ or checkpoints/), or a "
  "directory written by python -m megraph_jax.convert (model.json + state/)"
)


# ----------------------------------------------------------------------------- official .pth


def official_info(tensors: dict[str, np.ndarray]) -> dict[str, Any]:
  """What an official state_dict holds, from its key names: ``head``, ``stage``, ``num_aus``, ``family``, ``use_fgg``.

  OpenGraphAU (``head='opengraphau'``) has ``head.main_sc`` + ``head.sub_sc`` (41 outputs), ME-GraphAU ``head.sc``.
  Stage 2 has ``head.edge_extractor.*`` (and, for ME-GraphAU, ``head.edge_fc``); stage 1 has ``head.gnn.U`` (the
  FGG) or, ME-GraphAU trained with ``use_fgg=False``, only ``head.class_linears`` + ``head.sc``. The backbone
  family: ``backbone.conv1`` (ResNet), ``backbone.patch_embed`` (Swin), ``backbone.encoder`` (MAE ViT). Unknown
  entries are None.
  """
  info: dict[str, Any] = {"head": None, "stage": None, "num_aus": None, "family": None, "use_fgg": None}
  if "head.sc" in tensors:
    info["head"], info["num_aus"] = "megraph", int(tensors["head.sc"].shape[0])
  elif "head.main_sc" in tensors:
    sub = tensors.get("head.sub_sc")
    info["head"] = "opengraphau"
    info["num_aus"] = int(tensors["head.main_sc"].shape[0]) + (0 if sub is None else int(sub.shape[0]))
  if "head.edge_fc.weight" in tensors or any(k.startswith("head.edge_extractor.") for k in tensors):
    info["stage"] = 2
  elif "head.gnn.U.weight" in tensors:
    info["stage"], info["use_fgg"] = 1, True
  elif "head.sc" in tensors and not any(k.startswith("head.gnn.") for k in tensors):
    info["stage"], info["use_fgg"] = 1, False
  if "backbone.patch_embed.proj.weight" in tensors:
    info["family"] = "swin"
  elif "backbone.conv1.weight" in tensors:
    info["family"] = "resnet"
  elif "backbone.encoder.patch_embed.proj.weight" in tensors:
    info["family"] = "vit"
  return info


def spec_from_official(
  tensors: dict[str, np.ndarray],
  *,
  source: str = "<state_dict>",
  backbone: str | None = None,
  num_aus: int | None = None,
  stage: int | None = None,
  neighbor_num: int | None = None,
  metric: str | None = None,
  img_size: int | None = None,
  au_names: Any = None,
  dtype: Any = "float32",
) -> ModelSpec:
  """The spec of an official state_dict; given fields must agree with the tensors, the rest are read from them.

  The FGG's ``neighbor_num`` is not in the tensors: default 3 for 8 AUs (DISFA's yaml), else 4 (BP4D's and
  OpenGraphAU's yaml); ``metric`` defaults to ``'dots'`` (both official configs).
  """
  info = official_info(tensors)
  if info["num_aus"] is None or info["stage"] is None:
    raise CheckpointError(
      f"{source}: no 'head.sc' / 'head.main_sc' or graph keys: not an ME-GraphAU or OpenGraphAU checkpoint "
      "(stage 1 or 2)"
    )
  problems = []
  if stage is not None and info["stage"] != stage:
    problems.append(f"it is a stage-{info['stage']} checkpoint but stage={stage} was asked for")
  if num_aus is not None and info["num_aus"] != num_aus:
    problems.append(f"it holds {info['num_aus']} AUs but num_aus={num_aus}")
  if backbone is not None and info["family"] is not None and info["family"] != ModelSpec(backbone, 2).family:
    problems.append(f"its backbone is a {info['family']} but backbone='{backbone}'")
  if au_names is not None and len(au_names) != info["num_aus"]:
    problems.append(f"it holds {info['num_aus']} AUs but {len(au_names)} AU names were given ({', '.join(au_names)})")
  if problems:
    raise CheckpointError(f"{source}: " + "; ".join(problems))
  n = info["num_aus"]
  if info["head"] == "opengraphau" and "head.sub_sc" not in tensors:
    raise CheckpointError(f"{source}: an OpenGraphAU checkpoint (head.main_sc) without 'head.sub_sc': truncated?")
  return ModelSpec(
    backbone=backbone or infer_backbone(tensors, source=source),
    num_aus=n,
    stage=info["stage"],
    head=info["head"],
    au_names=au_names,
    neighbor_num=neighbor_num or (3 if n == 8 else 4),
    metric=metric or "dots",
    use_fgg=info["use_fgg"] is not False,
    img_size=img_size or 224,
    dtype=dtype,
  )


def load_official_state_dict(model: Model, tensors: dict[str, np.ndarray], *, source: str = "<state_dict>") -> None:
  """Maps every tensor of an official state_dict onto ``model``; missing/unexpected/mis-shaped keys raise."""
  if model.HEAD == "baseline":
    raise CheckpointError(f"{source}: the official code has no baseline model; load a megraph-jax checkpoint")
  spec = ModelSpec.of(model)
  spec_from_official(tensors, source=source, backbone=spec.backbone, num_aus=spec.num_aus, stage=spec.stage)
  head = official_info(tensors)["head"]
  if head != spec.head:
    raise CheckpointError(f"{source}: it is a {head} checkpoint but the model is a {spec.head} model")
  if spec.stage == 1 and official_info(tensors)["use_fgg"] != spec.use_fgg:
    raise CheckpointError(
      f"{source}: the checkpoint {'has' if not spec.use_fgg else 'has no'} FGG (head.gnn) but "
      f"the model was built with use_fgg={spec.use_fgg}"
    )
  sd = StateDict(tensors, source=source)
  if spec.family == "resnet":
    load_resnet(sd, "backbone.", model.backbone)
  elif spec.family == "swin":
    load_swin(sd, "backbone.", model.backbone)
  else:
    load_mae(sd, "backbone.encoder.", model.backbone)
  if spec.head == "opengraphau":
    load_opengraphau_head(sd, model)
  else:
    load_head(sd, model, spec.stage)
  sd.check_all_used()


def _concrete_rng_state(model: Model, seed: int = 0) -> None:
  """Gives the RNG streams (drop path) left abstract in an ``nnx.eval_shape`` model concrete keys and counts."""
  for i, (path, var) in enumerate(nnx.to_flat_state(nnx.state(model))):
    value = var.get_value()
    if not isinstance(value, jax.ShapeDtypeStruct):
      continue
    if isinstance(var, nnx.RngKey):
      var.set_value(jax.random.fold_in(jax.random.key(seed), i))
    elif isinstance(var, nnx.RngCount):
      var.set_value(jnp.zeros(value.shape, value.dtype))
    else:
      raise CheckpointError(f"{'.'.join(map(str, path))}: not set by the checkpoint (a loader bug)")


def init_backbone_from_imagenet(model: Model, path: str | os.PathLike) -> None:
  """Loads ImageNet weights into ``model.backbone``: a torchvision ResNet or official Swin ``.pth``."""
  if ModelSpec.of(model).family == "resnet":
    load_torchvision_imagenet(path, model.backbone)
  else:
    load_swin_imagenet(path, model.backbone)


# ----------------------------------------------------------------------------- our directories


def is_saved_model(path: str) -> bool:
  """Whether ``path`` is a directory written by :func:`save` (model.json + state/)."""
  return os.path.isfile(os.path.join(path, MODEL_JSON)) and os.path.isdir(os.path.join(path, STATE))


def stored_spec(path: str | os.PathLike) -> ModelSpec | None:
  """The spec stored with one of our checkpoints (stage dir, its best/ or checkpoints/, a saved dir), else None."""
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  d = path if is_saved_model(path) else stage_dirs.stage_dir_of(path)
  return ModelSpec.read(d) if d else None


def save(model: Model, directory: str | os.PathLike, *, spec: ModelSpec | None = None) -> str:
  """Writes ``directory/state`` (orbax) and ``directory/model.json``; returns the directory.

  ``spec`` defaults to :meth:`ModelSpec.of` ``(model)`` (no AU names).
  """
  spec = spec or ModelSpec.of(model)
  directory = os.path.abspath(os.fspath(directory))
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, STATE), nnx.state(model), force=True)
  spec.write(directory)
  return directory


def _restore(spec: ModelSpec, restore_fn) -> Model:
  """Builds ``spec`` abstractly (no random init) and fills it with ``restore_fn(abstract_state)``."""
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: build(spec)))
  return nnx.merge(graphdef, restore_fn(abstract_state))


def load(
  path: str | os.PathLike, *, dtype: Any = None, which: str | None = None, **official: Any
) -> tuple[Model, ModelSpec]:
  """(model in eval mode, its spec) from any checkpoint the project knows (see the module docstring).

  ``dtype``: compute dtype of the returned model (``'float32'``, ``'bfloat16'``, ``'float64'`` or a dtype);
  parameters are float64 for float64, else float32, whatever the file holds. Default float32.
  ``which``: for a stage directory, ``'best'`` (default) or ``'latest'`` (default for its ``checkpoints/``).
  ``official``: for a ``.pth`` only, :func:`spec_from_official`'s fields (``backbone``, ``num_aus``,
  ``stage``, ``neighbor_num``, ``metric``, ``img_size``, ``au_names``); those the file holds are checked.
  """
  dtype = dtype_name(dtype if dtype is not None else "float32")
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if not os.path.exists(path):
    raise CheckpointNotFoundError(f"{path}: no such checkpoint; pass {KINDS}")
  if os.path.isfile(path):
    tensors = load_pth(path)
    spec = spec_from_official(tensors, source=path, dtype=dtype, **official)
    model = nnx.eval_shape(lambda: build(spec))  # no random init: every weight comes from the file
    load_official_state_dict(model, tensors, source=path)
    _concrete_rng_state(model)
  elif is_saved_model(path):
    spec = ModelSpec.read(path).replace(dtype=dtype)

    def restore(abstract_state):
      with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.join(path, STATE), abstract_state)

    model = _restore(spec, restore)
  elif (stage_dir := stage_dirs.stage_dir_of(path)) is not None:
    which = which or ("latest" if stage_dirs.names_checkpoints(path) else "best")
    spec = ModelSpec.read(stage_dir).replace(dtype=dtype)
    model = _restore(spec, lambda s: checkpointing.restore_model_state(stage_dir, s, which=which)[1])
  else:
    hint = f"{os.path.join(path, MODEL_JSON)}: missing; " if not os.path.isfile(os.path.join(path, MODEL_JSON)) else ""
    raise CheckpointNotFoundError(f"{path}: {hint}not a megraph-jax checkpoint; expected {KINDS}")
  return eval_view(model), spec
