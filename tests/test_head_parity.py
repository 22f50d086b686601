"""Heads (global_linear + ANFL / MEFL + GatedGCN) against golden outputs of the official PyTorch model.

tests/data/golden_heads.npz was written by tools/make_golden.py from the official code
(random weights and random BatchNorm statistics, small C and N).
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from megraph_jax.models.megraph import Stage1Model, Stage2Model
from megraph_jax.weights.common import StateDict
from megraph_jax.weights.megraph import load_head

pytestmark = pytest.mark.precision("highest")  # parity with the official model / references to ~1e-7

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden_heads.npz")
CASES = ["s1_dots", "s1_cosine", "s1_l1", "s2", "s2_n8"]


class _Identity(nnx.Module):
  """Stands in for the backbone: the golden inputs are already X [B, D, C_in]."""

  def __init__(self, c):
    self.num_features = c

  def __call__(self, x):
    return x


def _case(name):
  z = np.load(GOLDEN)
  cfg = {k.split("/")[-1]: z[k].item() for k in z.files if k.startswith(f"{name}/cfg/")}
  sd = {k[len(f"{name}/sd/") :]: z[k] for k in z.files if k.startswith(f"{name}/sd/")}
  rest = {k[len(name) + 1 :]: z[k] for k in z.files if k.startswith(name + "/")}
  return cfg, sd, rest


def _model(cfg):
  kw = dict(
    backbone="swin_transformer_tiny", num_aus=cfg["n"], rngs=nnx.Rngs(0), backbone_module=_Identity(cfg["c_in"])
  )
  if cfg["stage"] == 1:
    return Stage1Model(neighbor_num=cfg["k"], metric=cfg["metric"], **kw)
  return Stage2Model(**kw)


def _run(model, x):
  return model.head(model.global_linear(jnp.asarray(x)))


@pytest.mark.parametrize("name", CASES)
def test_eval_matches_official(name):
  cfg, sd_np, rest = _case(name)
  model = _model(cfg)
  sd = StateDict(sd_np, source=name)
  load_head(sd, model, cfg["stage"])
  sd.check_all_used()
  model.eval()
  out = _run(model, rest["x"])
  diff = np.abs(np.asarray(out["au_probs"]) - rest["eval/au_probs"]).max()
  assert diff < 1e-5, f"{name}: au_probs max abs diff {diff}"
  if cfg["stage"] == 2:
    ref = rest["eval/edge_logits"]
    assert out["edge_logits"].shape == (cfg["b"], cfg["n"] ** 2, 4)
    rel = np.abs(np.asarray(out["edge_logits"]) - ref).max() / np.abs(ref).max()
    assert rel < 1e-5, f"{name}: edge_logits max relative diff {rel}"


@pytest.mark.parametrize("name", CASES)
def test_train_mode_matches_official(name):
  """Batch statistics in the forward pass and the updated running statistics (unbiased variance)."""
  cfg, sd_np, rest = _case(name)
  model = _model(cfg)
  load_head(StateDict(sd_np, source=name), model, cfg["stage"])
  model.train()
  out = _run(model, rest["x"])
  diff = np.abs(np.asarray(out["au_probs"]) - rest["train/au_probs"]).max()
  assert diff < 1e-5, f"{name}: train-mode au_probs max abs diff {diff}"
  if cfg["stage"] == 2:
    ref = rest["train/edge_logits"]
    rel = np.abs(np.asarray(out["edge_logits"]) - ref).max() / np.abs(ref).max()
    assert rel < 1e-5, f"{name}: train-mode edge_logits max relative diff {rel}"
  # The running statistics after one train-mode forward: reload them through the converter.
  updated = dict(sd_np)
  updated.update({k[len("train_sd/") :]: v for k, v in rest.items() if k.startswith("train_sd/")})
  ref_model = _model(cfg)
  load_head(StateDict(updated, source=name + "(after train step)"), ref_model, cfg["stage"])
  ours = nnx.to_flat_state(nnx.state(model, nnx.BatchStat))
  theirs = dict(nnx.to_flat_state(nnx.state(ref_model, nnx.BatchStat)))
  assert len(ours) > 0
  for path, var in ours:
    np.testing.assert_allclose(
      np.asarray(var[...]),
      np.asarray(theirs[path][...]),
      rtol=1e-5,
      atol=1e-6,
      err_msg=f"{name}: running statistic {path}",
    )


def test_wrong_num_aus_is_a_clear_error():
  cfg, sd_np, _ = _case("s2")
  cfg = dict(cfg, n=cfg["n"] + 1)
  with pytest.raises(ValueError, match="num_aus"):
    load_head(StateDict(sd_np, source="s2"), _model(cfg), 2)


def test_misshaped_and_missing_keys_are_named():
  cfg, sd_np, _ = _case("s1_dots")
  bad = dict(sd_np)
  bad["head.gnn.U.weight"] = bad["head.gnn.U.weight"][:, :-1]
  with pytest.raises(ValueError, match="head.gnn.U.weight"):
    load_head(StateDict(bad, source="s1"), _model(cfg), 1)
  bad = dict(sd_np)
  del bad["head.gnn.bnv.running_var"]
  with pytest.raises(KeyError, match="head.gnn.bnv.running_var"):
    load_head(StateDict(bad, source="s1"), _model(cfg), 1)
