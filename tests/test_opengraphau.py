"""OpenGraphAU models against golden outputs of the official PyTorch code (tools/make_opengraphau_golden.py).

``head/*``: global_linear + Head of both stages (stored state_dicts), every FGG metric, eval and train mode.
``full/*``: whole official models with weights from ``golden_cases.seeded_state_dict`` (only key names stored), loaded
through ``loader.load`` with the spec read from the tensor names and every tensor mapped. Reading a case, building
and running its model: tools/golden_cases.py (shared with benchmarks/device_check.py).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from golden_cases import BIG_FULL as BIG
from golden_cases import FAST_FULL as FAST
from golden_cases import (
  OPENGRAPHAU_FULL,
  OPENGRAPHAU_HEADS,
  load_full_case,
  official_tensors,
  opengraphau_head_case,
  opengraphau_head_model,
  read_opengraphau,
  run_full,
  run_head,
  write_official_pth,
)

from megraph_jax import loader
from megraph_jax.errors import CheckpointError
from megraph_jax.model_factory import ModelSpec, build
from megraph_jax.models.opengraphau import OFFICIAL_METRICS
from megraph_jax.task import OPENGRAPHAU_AUS
from megraph_jax.weights.common import StateDict
from megraph_jax.weights.opengraphau import load_opengraphau_head

pytestmark = pytest.mark.precision("highest")  # parity with the official model / references to ~1e-7
# float32 parity, measured on an x86 CPU: whole models and heads in eval mode 1.8e-7, the heads' running statistics
# 1.2e-7, heads in train mode (moments of batches of 2..3) 5.5e-7.
ATOL = 1e-6
TRAIN_ATOL = 3e-6


@pytest.fixture(scope="module")
def golden():
  return read_opengraphau()


@pytest.mark.parametrize("name", OPENGRAPHAU_HEADS)
def test_heads_match_official_eval_and_train(golden, name):
  cfg, sd = opengraphau_head_case(golden, name)
  model = opengraphau_head_model(cfg)
  state = StateDict(sd, source=name)
  load_opengraphau_head(state, model)
  state.check_all_used()
  x = golden[f"head/{name}/x"]
  run = lambda: np.asarray(run_head(model, x)["au_probs"])
  model.eval()
  err = np.abs(run() - golden[f"head/{name}/eval"]).max()
  print(f"{name} eval: max |ours - official| = {err:.2e}")
  assert err < ATOL, f"{name} eval: max |ours - official| = {err:.2e}"
  before = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))}
  model.train()
  err = np.abs(run() - golden[f"head/{name}/train"]).max()
  print(f"{name} train: max |ours - official| = {err:.2e}")
  assert err < TRAIN_ATOL, f"{name} train: max |ours - official| = {err:.2e}"
  # Every BatchNorm running statistic after that training pass (momentum 0.1, unbiased variance), a fine-tuning
  # prerequisite: the official ones loaded into a fresh model through the loader's names, compared leaf by leaf.
  p = f"head/{name}/train_sd/"
  trained = {k[len(p) :]: v for k, v in golden.items() if k.startswith(p)}
  official = opengraphau_head_model(cfg)
  state = StateDict({**sd, **trained}, source=f"{name} trained")
  load_opengraphau_head(state, official)
  state.check_all_used()
  got = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))}
  want = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(official, nnx.BatchStat))}
  sizes = sum(v.size for v in want.values()), sum(v.size for v in trained.values())
  assert got.keys() == want.keys() and sizes[0] == sizes[1], sizes  # every official statistic is one of ours
  errs = {p: np.abs(got[p] - want[p]).max() for p in want}
  worst = max(errs, key=errs.get)
  print(f"{name}: {len(want)} statistics, max |ours - official| = {errs[worst]:.2e} ({'/'.join(map(str, worst))})")
  for p in want:
    assert np.abs(want[p] - before[p]).max() > 1e-3, p  # the pass moved each one
    assert errs[p] < ATOL, f"{name} {'/'.join(map(str, p))}: {errs[p]:.2e} off the official statistic"


def test_official_metric_names_are_swapped():
  """OpenGraphAU's 'l1' is the Euclidean distance and its 'l2' the L1 distance (h1_l1 / h1_l2 above pass)."""
  assert OFFICIAL_METRICS["l1"] == "l2" and OFFICIAL_METRICS["l2"] == "l1"


def _check_full(golden, name, tmp_path, dtype="float32", atol=ATOL):
  backbone, stage, size, batch, _ = OPENGRAPHAU_FULL[name]
  model, spec, x, want = load_full_case(golden, name, str(tmp_path), dtype)  # through an official .pth
  assert spec == ModelSpec(backbone, 41, stage, head="opengraphau", img_size=size, dtype=dtype)
  assert spec.names == OPENGRAPHAU_AUS
  out = run_full(model, x, spec.dtype)
  assert out.shape == (batch, 41) and out.dtype == jnp.dtype(dtype)
  err = np.abs(np.asarray(out, np.float64) - want).max()
  print(f"{name} {dtype}: max |ours - official| = {err:.2e}")
  assert err < atol, f"{name} {dtype}: max |ours - official| = {err:.2e} (tolerance {atol:.0e})"
  return model


@pytest.mark.parametrize("name", FAST)
def test_official_checkpoint_loads_and_matches(golden, name, tmp_path):
  _check_full(golden, name, tmp_path)


@pytest.mark.parametrize("name", BIG)
def test_official_checkpoint_loads_and_matches_224(golden, name, tmp_path):
  _check_full(golden, name, tmp_path)


def test_float64_is_honoured(golden, tmp_path):
  with jax.enable_x64(True):
    model = _check_full(golden, "r18_s2", tmp_path, dtype="float64", atol=1e-10)
    assert all(p.dtype == jnp.float64 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_unmapped_or_missing_tensors_are_errors(golden, tmp_path):
  tensors = official_tensors(golden, "full/r18_s1", 1)
  extra = {**tensors, "backbone.fc.weight": np.zeros((1000, 512), np.float32)}  # a classifier the official drops
  with pytest.raises(KeyError, match="unexpected key"):
    loader.load_official_state_dict(build(ModelSpec("resnet18", 41, 1, head="opengraphau", img_size=64)), extra)
  missing = {k: v for k, v in tensors.items() if k != "head.sub_sc"}
  path = str(tmp_path / "missing.pth")
  write_official_pth(missing, path)
  with pytest.raises((KeyError, CheckpointError), match="head.sub_sc|41"):
    loader.load(path, img_size=64)
  bad = {**tensors, "head.main_sc": np.zeros((27, 64), np.float32)}
  with pytest.raises(ValueError, match="head.main_sc"):
    loader.load_official_state_dict(build(ModelSpec("resnet18", 41, 1, head="opengraphau", img_size=64)), bad)


def test_spec_json_round_trip_and_errors():
  spec = ModelSpec("mae_base_patch16_224", 41, 2, head="opengraphau")
  assert ModelSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
  assert spec.to_json()["family"] == "vit" and spec.names == OPENGRAPHAU_AUS
  assert ModelSpec.of(nnx.eval_shape(lambda: build(spec))) == spec
  with pytest.raises(ValueError, match="41 outputs"):
    ModelSpec("resnet50", 27, 1, head="opengraphau")
  with pytest.raises(ValueError, match="FGG"):
    ModelSpec("resnet50", 41, 1, head="opengraphau", use_fgg=False)
