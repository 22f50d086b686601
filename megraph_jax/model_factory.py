"""One model spec and one factory: :class:`ModelSpec` (what a model is, stored as ``model.json``) and :func:`build`.

Every model of the project is built here: training (:func:`build_from_config`), the checkpoint loader
(``megraph_jax.loader``), conversion, prediction, tools and benchmarks. A spec holds what the architecture
and its input need; training settings that do not change the weights' layout (seed, drop-path rate,
rematerialisation) are arguments of :func:`build`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from megraph_jax.errors import ConfigError
from megraph_jax.models.backbones import BACKBONES, backbone_family
from megraph_jax.models.fgg import METRICS
from megraph_jax.models.megraph import BaselineModel, Stage1Model, Stage2Model
from megraph_jax.models.opengraphau import OpenGraphAUStage1, OpenGraphAUStage2
from megraph_jax.models.trunk import FaceTrunk
from megraph_jax.stage_dirs import MODEL_JSON  # the spec as JSON, next to a model's weights (stage dirs, convert dirs)
from megraph_jax.task import BP4D_AUS, DISFA_AUS, OPENGRAPHAU_AUS
from megraph_jax.task import au_names as dataset_au_names

Model = Stage1Model | Stage2Model | BaselineModel | OpenGraphAUStage1 | OpenGraphAUStage2
# The model family as data: (head, stage) -> class. Building, describing (ModelSpec.of), the stage-1 -> stage-2
# hand-over and loading official weights look a model up here or read its HEAD / STAGE / SPEC_FIELDS.
MODELS: dict[tuple[str, int], type[FaceTrunk]] = {
  (cls.HEAD, cls.STAGE): cls for cls in (Stage1Model, Stage2Model, BaselineModel, OpenGraphAUStage1, OpenGraphAUStage2)
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}
# ME-GraphAU, Table 3's "backbone only" (BaselineModel), or OpenGraphAU (27 main + 14 left/right AUs, 41 outputs)
HEADS = ("megraph", "baseline", "opengraphau")


def default_au_names(num_aus: int) -> tuple[str, ...]:
  """BP4D's 12 AUs, DISFA's 8, else ``AU0..AU{N-1}`` (model indices): for a checkpoint storing no AU names."""
  return tuple(f"AU{a}" for a in {12: BP4D_AUS, 8: DISFA_AUS}.get(num_aus, range(num_aus)))


def dtype_name(dtype: Any) -> str:
  """``'float32'``, ``'bfloat16'`` or ``'float64'`` for a name or a JAX/NumPy dtype."""
  name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
  if name not in DTYPES:
    raise ValueError(f"dtype {dtype!r}; choose one of {sorted(DTYPES)}")
  return name


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A model as a value: rebuilds the same architecture anywhere (``model.json``).

  ``stage`` 1 is backbone + AFG + FGG (Eq. 1) + SC head (Eq. 2), ``use_fgg=False`` drops the FGG (Table 3);
  stage 2 adds MEFL (Eqs. 3-5) and a ``gnn_layers``-layer GatedGCN. ``head='baseline'`` is backbone + linear
  classifier (stage 1 only). ``dtype`` is the compute dtype; parameters are float64 for ``'float64'``, else
  float32. Inputs are ``[B, img_size, img_size, 3]``; ``au_probs`` is ``[B, num_aus]``.
  ``head='opengraphau'``: OpenGraphAU's stage 1 or 2 (``num_aus`` = its 41 outputs; the graph has 27 nodes);
  ``metric`` is ours (``models.opengraphau.OFFICIAL_METRICS`` translates the official OpenGraphAU names).
  """

  backbone: str
  num_aus: int
  stage: int = 1
  head: str = "megraph"
  au_names: tuple[str, ...] | None = None
  neighbor_num: int = 4  # K of the FGG's kNN graph (official yaml: BP4D 4, DISFA 3)
  metric: str = "dots"
  use_fgg: bool = True
  gnn_layers: int = 2
  img_size: int = 224
  dtype: str = "float32"

  def __post_init__(self):
    if self.au_names is not None:
      object.__setattr__(self, "au_names", tuple(str(a) for a in self.au_names))
    object.__setattr__(self, "dtype", dtype_name(self.dtype))
    problems = []
    if self.backbone not in BACKBONES:
      problems.append(f"backbone {self.backbone!r} is none of {', '.join(BACKBONES)}")
    if self.stage not in (1, 2):
      problems.append(f"stage must be 1 or 2, got {self.stage!r}")
    if self.head not in HEADS:
      problems.append(f"head {self.head!r}; choose one of {', '.join(HEADS)}")
    elif self.head == "baseline" and self.stage != 1:
      problems.append("head 'baseline' (backbone + linear classifier) has only one stage")
    elif self.head == "opengraphau" and not self.use_fgg:
      problems.append("head 'opengraphau' always has its FGG (the official code has no use_fgg=False variant)")
    if not isinstance(self.num_aus, int) or self.num_aus < 2:
      problems.append(f"num_aus must be an integer >= 2, got {self.num_aus!r}")
    elif self.head == "opengraphau" and self.num_aus != len(OPENGRAPHAU_AUS):
      problems.append(f"head 'opengraphau' has {len(OPENGRAPHAU_AUS)} outputs, got num_aus={self.num_aus}")
    elif self.au_names is not None and len(self.au_names) != self.num_aus:
      problems.append(f"{len(self.au_names)} AU names ({', '.join(self.au_names)}) for {self.num_aus} AUs")
    if self.metric not in METRICS:
      problems.append(f"metric {self.metric!r}; choose one of {', '.join(METRICS)}")
    if problems:
      raise ValueError("model spec: " + "; ".join(problems))

  @property
  def family(self) -> str:
    """The backbone's family: ``'resnet'``, ``'swin'`` or ``'vit'``."""
    return backbone_family(self.backbone)

  @property
  def names(self) -> tuple[str, ...]:
    """The AU names, or the benchmark's (OpenGraphAU's 41) when none are stored."""
    if self.au_names:
      return self.au_names
    return OPENGRAPHAU_AUS if self.head == "opengraphau" else default_au_names(self.num_aus)

  def replace(self, **changes: Any) -> ModelSpec:
    return dataclasses.replace(self, **changes)

  # --------------------------------------------------------------------------- JSON

  def to_json(self) -> dict[str, Any]:
    """Every field (``family`` too, for reading), AU names as a list."""
    d = dataclasses.asdict(self)
    d["au_names"] = None if self.au_names is None else list(self.au_names)
    return {"family": self.family, **d}

  @classmethod
  def from_json(cls, d: dict[str, Any], *, source: str = "model.json") -> ModelSpec:
    """Reads :meth:`to_json` and the older files: training's (head-specific keys only) and convert's (no head)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields - {"family"})
    if unknown:
      raise ValueError(f"{source}: unknown keys {unknown}; written by a newer megraph-jax?")
    missing = sorted({"backbone", "num_aus"} - set(d))
    if missing:
      raise ValueError(f"{source}: missing keys {missing}")
    try:
      spec = cls(**{k: v for k, v in d.items() if k in fields})
    except ValueError as e:
      raise ValueError(f"{source}: {e}") from None
    if "family" in d and d["family"] != spec.family:
      raise ValueError(f"{source}: family {d['family']!r} does not match backbone {spec.backbone!r}")
    return spec

  def write(self, directory: str | os.PathLike) -> str:
    """Writes ``directory/model.json``; returns its path."""
    path = os.path.join(os.fspath(directory), MODEL_JSON)
    os.makedirs(os.fspath(directory), exist_ok=True)
    with open(path, "w") as f:
      json.dump(self.to_json(), f, indent=2)
    return path

  @classmethod
  def read(cls, directory: str | os.PathLike) -> ModelSpec:
    """The spec in ``directory/model.json``."""
    path = os.path.join(os.fspath(directory), MODEL_JSON)
    with open(path) as f:
      return cls.from_json(json.load(f), source=path)

  # --------------------------------------------------------------------------- other sources

  @classmethod
  def from_config(cls, config: Any, stage: int) -> ModelSpec:
    """The model of ``stage`` that a training config (``configs/default.py``) describes."""
    m, data = config.model, config.dataset
    if m.head not in HEADS:
      raise ConfigError(f"config key 'model.head' = {m.head!r}; choose one of {', '.join(HEADS)}")
    if m.head == "baseline" and stage != 1:
      raise ConfigError(
        "config key 'model.head' = 'baseline' (backbone + linear classifier) has only one stage; "
        "use --config.mode=stage1"
      )
    if m.backbone not in BACKBONES:
      raise ConfigError(f"config key 'model.backbone' = {m.backbone!r}; choose one of {', '.join(BACKBONES)}")
    if m.metric not in METRICS:
      raise ConfigError(f"config key 'model.metric' = {m.metric!r}; choose one of {', '.join(METRICS)}")
    if m.dtype not in DTYPES:
      raise ConfigError(f"config key 'model.dtype' = {m.dtype!r}; choose one of {sorted(DTYPES)}")
    if m.dtype == "float64" and not jax.config.jax_enable_x64:
      raise ConfigError("config key 'model.dtype' = 'float64' needs 64-bit JAX: set JAX_ENABLE_X64=1")
    for key, value in (("model.neighbor_num", m.neighbor_num), ("model.gnn_layers", m.gnn_layers),
                       ("dataset.crop_size", data.crop_size)):  # fmt: skip
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"config key {key!r} = {value!r}: must be a positive integer")
    au_names = dataset_au_names(data)  # N follows from the dataset (or dataset.au_names)
    if m.head == "megraph" and stage == 1 and m.use_fgg and m.neighbor_num > len(au_names):
      raise ConfigError(
        f"config key 'model.neighbor_num' = {m.neighbor_num}: K of the FGG's kNN graph must be at most the "
        f"{len(au_names)} AUs (config key 'dataset.au_names' / 'dataset.name')"
      )
    try:
      return cls(
        backbone=m.backbone,
        num_aus=len(au_names),
        stage=stage,
        head=m.head,
        au_names=au_names,
        neighbor_num=m.neighbor_num,
        metric=m.metric,
        use_fgg=bool(m.use_fgg),
        gnn_layers=m.gnn_layers,
        img_size=data.crop_size,
        dtype=m.dtype,
      )
    except ValueError as e:  # what the checks above leave to the spec: the AUs (number, head), use_fgg
      raise ConfigError(
        f"config keys model.* / dataset.au_names / dataset.name describe no model: {e} (configs/default.py "
        "describes each key)"
      ) from None

  @classmethod
  def of(cls, model: Model, *, au_names: Any = None) -> ModelSpec:
    """The spec that rebuilds ``model`` (an instance built by :func:`build` or by hand)."""
    return cls(
      backbone=model.backbone_name,
      num_aus=model.num_aus,
      img_size=model.img_size,
      dtype=dtype_name(model.dtype),
      au_names=au_names,
      head=model.HEAD,
      stage=model.STAGE,
      **model.spec_fields(),
    )


def build(spec: ModelSpec, *, seed: int = 0, drop_path_rate: float | None = None, remat: bool = False) -> Model:
  """A freshly initialised model of ``spec`` (``nnx.eval_shape(lambda: build(spec))`` for an abstract one)."""
  if spec.dtype == "float64" and not jax.config.jax_enable_x64:
    raise ValueError(
      "dtype 'float64' needs 64-bit JAX: set JAX_ENABLE_X64=1 (or jax.config.update('jax_enable_x64', "
      "True) before anything else)"
    )
  dtype = DTYPES[spec.dtype]
  param_dtype = jnp.float64 if spec.dtype == "float64" else jnp.float32  # float64 only as a numerics check
  common = dict(
    img_size=spec.img_size,
    drop_path_rate=drop_path_rate,
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=nnx.Rngs(params=seed, dropout=seed + 1),
  )
  cls = MODELS[(spec.head, spec.stage)]
  model = cls(spec.backbone, num_aus=spec.num_aus, **{f: getattr(spec, f) for f in cls.SPEC_FIELDS}, **common)
  if remat:
    model.set_attributes(remat=True, raise_if_not_found=False)
  return model


def eval_view(model: Model) -> Model:
  """The eval view of ``model`` (running BatchNorm statistics, no DropPath), sharing its variables."""
  return nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)


def build_from_config(config: Any, stage: int, *, spec: ModelSpec | None = None) -> Model:
  """The model of ``stage`` as the training config describes it, randomly initialised from ``config.seed``;
  ``spec``: ``ModelSpec.from_config(config, stage)`` when the caller holds it already."""
  return build(
    spec or ModelSpec.from_config(config, stage),
    seed=config.seed,
    drop_path_rate=config.model.drop_path_rate,
    remat=bool(config.model.remat),
  )
