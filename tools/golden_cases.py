"""The golden cases of the official code, read, built and run in one place (tests and ``benchmarks/device_check.py``).

  import sys; sys.path.insert(0, "tools")
  import golden_cases as gc
  cfg, sd, rest = gc.megraph_head_case("s2")
  model = gc.megraph_head_model(cfg); gc.load_megraph_head(model, cfg, sd, "s2"); model.eval()
  diff = abs(gc.run_head(model, rest["x"])["au_probs"] - rest["eval/au_probs"]).max()

Files (written from the official PyTorch code, which is not needed to read them):
- ``tests/data/golden_heads.npz`` (``tools/make_golden.py``): ME-GraphAU's heads (global_linear + ANFL / MEFL +
  GatedGCN) on features X, random weights and BatchNorm statistics stored; cases :data:`MEGRAPH_HEADS`.
- ``tests/data/golden_opengraphau.npz`` (``tools/make_opengraphau_golden.py``): OpenGraphAU's heads
  (:data:`OPENGRAPHAU_HEADS`, state_dicts stored) and whole models (:data:`OPENGRAPHAU_FULL`), whose weights are
  :func:`seeded_state_dict` of the stored key names.

Imports JAX, Flax and ``megraph_jax`` only (no test module, no ml_collections, no TensorFlow); writing a ``.pth``
(:func:`write_official_pth`, :func:`load_full_case`) needs PyTorch.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from megraph_jax import loader
from megraph_jax.model_factory import Model, ModelSpec
from megraph_jax.models.megraph import Stage1Model, Stage2Model
from megraph_jax.models.opengraphau import OFFICIAL_METRICS, OpenGraphAUStage1, OpenGraphAUStage2
from megraph_jax.models.swin import relative_position_index
from megraph_jax.weights.common import StateDict
from megraph_jax.weights.megraph import load_head

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_HEADS = os.path.join(REPO, "tests", "data", "golden_heads.npz")
GOLDEN_OPENGRAPHAU = os.path.join(REPO, "tests", "data", "golden_opengraphau.npz")

MEGRAPH_HEADS = ("s1_dots", "s1_cosine", "s1_l1", "s2", "s2_n8")  # golden_heads.npz
OPENGRAPHAU_HEADS = ("h1_dots", "h1_cosine", "h1_l1", "h1_l2", "h2")  # golden_opengraphau.npz head/*
# The whole OpenGraphAU models of tools/make_opengraphau_golden.py ``full/*``: name: (backbone, stage, input side,
# batch, weight seed); the tool also records float64 for its FLOAT64 cases
OPENGRAPHAU_FULL = {
  "r18_s1": ("resnet18", 1, 64, 2, 1),
  "r18_s2": ("resnet18", 2, 64, 2, 2),
  "r50_s1": ("resnet50", 1, 64, 2, 3),
  "r50_s2": ("resnet50", 2, 64, 2, 4),
  "swint_s1": ("swin_transformer_tiny", 1, 224, 1, 5),
  "swinb_s1": ("swin_transformer_base", 1, 224, 1, 6),
  "swinb_s2": ("swin_transformer_base", 2, 224, 1, 7),
  "mae_s1": ("mae_base_patch16_224", 1, 224, 1, 8),
}
FAST_FULL = ("r18_s1", "r18_s2", "r50_s1", "r50_s2")  # 64 px: about a second each on 2 CPU cores
BIG_FULL = ("swint_s1", "swinb_s1", "swinb_s2", "mae_s1")  # 224 px, ~90M parameters: a few seconds each

# Buffers a seeded state_dict leaves alone: integer indices / counters and Swin's attention masks (rebuilt by us).
FIXED_BUFFERS = ("num_batches_tracked", "relative_position_index", "attn_mask")


class Identity(nnx.Module):
  """Stands in for the backbone: the golden head inputs are already X ``[B, D, C_in]``."""

  def __init__(self, c: int):
    self.num_features = c

  def __call__(self, x):
    return x


def run_head(model: Model, x: Any) -> dict[str, Any]:
  """``global_linear`` + head of ``model`` on features ``x`` (jitted, traced now: under the caller's precision);
  BatchNorm statistics update in train mode."""
  return nnx.jit(lambda m, v: m.head(m.global_linear(v)))(model, jnp.asarray(x))


# ----------------------------------------------------------------------------- ME-GraphAU heads


def megraph_head_case(name: str, path: str = GOLDEN_HEADS) -> tuple[dict[str, Any], dict[str, np.ndarray], dict]:
  """(config: b, n, c_in, k, metric, stage; official state_dict; everything else of the case: x, eval/*, train/*,
  train_sd/*) of ME-GraphAU head case ``name``."""
  with np.load(path) as z:
    cfg = {k.split("/")[-1]: z[k].item() for k in z.files if k.startswith(f"{name}/cfg/")}
    sd = {k[len(f"{name}/sd/") :]: z[k] for k in z.files if k.startswith(f"{name}/sd/")}
    rest = {k[len(name) + 1 :]: z[k] for k in z.files if k.startswith(name + "/")}
  if not cfg:
    raise KeyError(f"{path}: no ME-GraphAU head case {name!r}; cases: {', '.join(MEGRAPH_HEADS)}")
  return cfg, sd, rest


def megraph_head_model(cfg: dict[str, Any]) -> Stage1Model | Stage2Model:
  """A ME-GraphAU model of the case's sizes (a Swin name: C = C_in / 2), the backbone the identity."""
  kw = dict(backbone="swin_transformer_tiny", num_aus=cfg["n"], rngs=nnx.Rngs(0), backbone_module=Identity(cfg["c_in"]))
  if cfg["stage"] == 1:
    return Stage1Model(neighbor_num=cfg["k"], metric=cfg["metric"], **kw)
  return Stage2Model(**kw)


def load_megraph_head(model: Stage1Model | Stage2Model, cfg: dict[str, Any], sd: dict[str, np.ndarray], name: str):
  """Loads the case's official state_dict into ``model``; raises if a tensor is left unused."""
  state = StateDict(sd, source=name)
  load_head(state, model, cfg["stage"])
  state.check_all_used()


# ----------------------------------------------------------------------------- OpenGraphAU


def read_opengraphau(path: str = GOLDEN_OPENGRAPHAU) -> dict[str, np.ndarray]:
  """Every array of golden_opengraphau.npz."""
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def opengraphau_head_case(golden: dict[str, np.ndarray], name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config, official state_dict) of OpenGraphAU head case ``name``; its x, eval and train outputs are
  ``golden[f'head/{name}/x' | '/eval' | '/train']``."""
  cfg = json.loads(str(golden[f"head/{name}/cfg"]))
  p = f"head/{name}/sd/"
  return cfg, {k[len(p) :]: v for k, v in golden.items() if k.startswith(p)}


def opengraphau_head_model(cfg: dict[str, Any]) -> OpenGraphAUStage1 | OpenGraphAUStage2:
  """An OpenGraphAU model of the golden head's sizes (a Swin name: C = C_in / 2), the backbone the identity."""
  kw = dict(rngs=nnx.Rngs(0), backbone_module=Identity(cfg["c_in"]))
  if cfg["stage"] == 1:
    metric = OFFICIAL_METRICS[cfg["metric"]]
    return OpenGraphAUStage1("swin_transformer_tiny", neighbor_num=cfg["k"], metric=metric, **kw)
  return OpenGraphAUStage2("swin_transformer_tiny", **kw)


def seeded_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
  """Random float32 tensors for a state_dict's keys, each drawn from a generator seeded by (``seed``, key name).

  tools/make_opengraphau_golden.py puts these into the official PyTorch models; tests rebuild the same tensors from
  the stored key names, so golden files hold no weights. Scales keep a deep random network finite: weights
  N(0, 1/fan_in), norm scales 1 + N(0, 0.1^2), biases N(0, 0.1^2), BatchNorm means N(0, 0.1^2), variances U(0.5, 1.5).
  """
  out = {}
  for key, shape in shapes.items():
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
      v = rng.uniform(0.5, 1.5, shape)
    elif leaf == "weight" and len(shape) == 1:  # BatchNorm / LayerNorm scale
      v = 1.0 + 0.1 * rng.standard_normal(shape)
    elif len(shape) >= 2 and leaf != "relative_position_bias_table":
      v = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    else:  # biases, running means, q/v biases, relative position bias tables
      v = 0.1 * rng.standard_normal(shape)
    out[key] = v.astype(np.float32)
  return out


def seeded_images(seed: int, n: int, size: int) -> np.ndarray:
  """Normalised-looking float32 NHWC inputs ``[n, size, size, 3]`` drawn from ``seed``."""
  return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def official_tensors(golden: dict[str, np.ndarray], prefix: str, seed: int) -> dict[str, np.ndarray]:
  """The state_dict tools/make_opengraphau_golden.py put into the official model ``prefix`` of the golden file
  (``golden``: its arrays): seeded floats plus the fixed buffers' values."""
  shapes = {k: tuple(v) for k, v in json.loads(str(golden[f"{prefix}/keys"])).items()}
  tensors = seeded_state_dict({k: s for k, s in shapes.items() if not k.endswith(FIXED_BUFFERS)}, seed)
  for k, s in shapes.items():
    if k.endswith("num_batches_tracked"):
      tensors[k] = np.zeros(s, np.int64)
    elif k.endswith("relative_position_index"):
      tensors[k] = relative_position_index(7)
    elif k.endswith("attn_mask"):
      tensors[k] = np.zeros(s, np.float32)  # a buffer we rebuild; its value is not read
  return tensors


def write_official_pth(tensors: dict[str, np.ndarray], path: str) -> None:
  """As the official training saves it: {'state_dict': ...} with DataParallel's 'module.' prefix."""
  import torch  # pylint: disable=import-outside-toplevel  # only what writes .pth files loads it

  torch.save(
    {"epoch": 3, "state_dict": {"module." + k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}}, path
  )


def load_full_case(
  golden: dict[str, np.ndarray], name: str, directory: str, dtype: str = "float32"
) -> tuple[Model, ModelSpec, np.ndarray, np.ndarray]:
  """(model, spec, input images, official au_probs) of whole-model case ``name``: its seeded tensors written as an
  official ``.pth`` in ``directory`` and read back by ``loader.load`` (the spec inferred from the tensor names)."""
  _, _, size, batch, seed = OPENGRAPHAU_FULL[name]
  path = os.path.join(directory, f"OpenGprahAU-{name}.pth")
  write_official_pth(official_tensors(golden, f"full/{name}", seed), path)
  model, spec = loader.load(path, dtype=dtype, img_size=size)
  want = golden[f"full/{name}/out64" if dtype == "float64" else f"full/{name}/out"]
  return model, spec, seeded_images(seed, batch, size), want


def run_full(model: Model, x: np.ndarray, dtype: Any = None) -> Any:
  """``au_probs`` of a whole model on images ``x`` (cast to ``dtype``; jitted, traced now: the caller's precision)."""
  return nnx.jit(lambda m, v: m(v)["au_probs"])(model, jnp.asarray(x, dtype))
