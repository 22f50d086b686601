"""Heads (global_linear + ANFL / MEFL + GatedGCN) against golden outputs of the official PyTorch model.

tests/data/golden_heads.npz was written by tools/make_golden.py from the official code
(random weights and random BatchNorm statistics, small C and N); reading a case, building and running its model:
tools/golden_cases.py (shared with benchmarks/device_check.py).
"""

import numpy as np
import pytest
from flax import nnx
from golden_cases import MEGRAPH_HEADS as CASES
from golden_cases import load_megraph_head, megraph_head_case, megraph_head_model, run_head

from megraph_jax.weights.common import StateDict
from megraph_jax.weights.megraph import load_head

pytestmark = pytest.mark.precision("highest")  # parity with the official model / references to ~1e-7


@pytest.mark.parametrize("name", CASES)
def test_eval_matches_official(name):
  cfg, sd_np, rest = megraph_head_case(name)
  model = megraph_head_model(cfg)
  load_megraph_head(model, cfg, sd_np, name)  # and every tensor used
  model.eval()
  out = run_head(model, rest["x"])
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
  cfg, sd_np, rest = megraph_head_case(name)
  model = megraph_head_model(cfg)
  load_head(StateDict(sd_np, source=name), model, cfg["stage"])
  model.train()
  out = run_head(model, rest["x"])
  diff = np.abs(np.asarray(out["au_probs"]) - rest["train/au_probs"]).max()
  assert diff < 1e-5, f"{name}: train-mode au_probs max abs diff {diff}"
  if cfg["stage"] == 2:
    ref = rest["train/edge_logits"]
    rel = np.abs(np.asarray(out["edge_logits"]) - ref).max() / np.abs(ref).max()
    assert rel < 1e-5, f"{name}: train-mode edge_logits max relative diff {rel}"
  # The running statistics after one train-mode forward: reload them through the converter.
  updated = dict(sd_np)
  updated.update({k[len("train_sd/") :]: v for k, v in rest.items() if k.startswith("train_sd/")})
  ref_model = megraph_head_model(cfg)
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
  cfg, sd_np, _ = megraph_head_case("s2")
  cfg = dict(cfg, n=cfg["n"] + 1)
  with pytest.raises(ValueError, match="num_aus"):
    load_head(StateDict(sd_np, source="s2"), megraph_head_model(cfg), 2)


def test_misshaped_and_missing_keys_are_named():
  cfg, sd_np, _ = megraph_head_case("s1_dots")
  bad = dict(sd_np)
  bad["head.gnn.U.weight"] = bad["head.gnn.U.weight"][:, :-1]
  with pytest.raises(ValueError, match="head.gnn.U.weight"):
    load_head(StateDict(bad, source="s1"), megraph_head_model(cfg), 1)
  bad = dict(sd_np)
  del bad["head.gnn.bnv.running_var"]
  with pytest.raises(KeyError, match="head.gnn.bnv.running_var"):
    load_head(StateDict(bad, source="s1"), megraph_head_model(cfg), 1)
