"""Stage1Model / Stage2Model contracts: shapes, train vs eval, num_aus, bf16 compute, stage-2 init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import forward

from megraph_jax.models.megraph import Stage1Model, Stage2Model
from megraph_jax.models.trunk import init_stage2_from_stage1

IMG = 32


def _images(b=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, IMG, IMG, 3)).astype("f4"))


@pytest.fixture(scope="module")
def stage1():
  return Stage1Model("resnet18", 5, neighbor_num=2, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def stage2():
  return Stage2Model("resnet18", 5, rngs=nnx.Rngs(1))


def test_call_contract(stage1, stage2):
  stage1.eval()
  stage2.eval()
  o1, o2 = forward(stage1, _images()), forward(stage2, _images())
  assert o1["au_probs"].shape == (3, 5) and o2["au_probs"].shape == (3, 5)
  assert o2["edge_logits"].shape == (3, 25, 4)
  for o in (o1, o2):
    p = np.asarray(o["au_probs"])
    assert np.all(p >= 0) and np.all(p <= 1 + 1e-6)
  adj = np.asarray(o1["adjacency"])
  assert np.all(adj.sum(-1) >= 2)  # at least K neighbours (ties may add more)
  with pytest.raises(ValueError, match="NHWC"):
    stage1(jnp.zeros((2, 3, IMG, IMG)))


def test_train_mode_uses_batch_statistics_and_updates_them(stage2):
  x = _images()
  stage2.eval()
  before = jax.tree.map(np.asarray, nnx.state(stage2, nnx.BatchStat))
  e1 = np.asarray(forward(stage2, x)["au_probs"])
  after_eval = jax.tree.map(np.asarray, nnx.state(stage2, nnx.BatchStat))
  jax.tree.map(np.testing.assert_array_equal, before, after_eval)  # eval never touches statistics
  stage2.train()
  t1 = np.asarray(forward(stage2, x)["au_probs"])
  after_train = jax.tree.map(np.asarray, nnx.state(stage2, nnx.BatchStat))
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after_train))
  assert all(changed), "every BatchNorm's running statistics move in a train-mode forward"
  assert not np.allclose(e1, t1)
  stage2.eval()


@pytest.mark.parametrize("n", [2, 8])
def test_any_number_of_aus(n):
  m = Stage2Model("resnet18", n, rngs=nnx.Rngs(0))
  m.eval()
  o = forward(m, _images(2))
  assert o["au_probs"].shape == (2, n) and o["edge_logits"].shape == (2, n * n, 4)


def test_bfloat16_compute_keeps_float32_parameters(stage2):
  """bf16 compute vs fp32 on the same parameters: |diff| of au_probs <= 0.05 (probabilities)."""
  stage2.eval()
  ref = np.asarray(forward(stage2, _images())["au_probs"])
  m16 = Stage2Model("resnet18", 5, dtype=jnp.bfloat16, rngs=nnx.Rngs(1))
  nnx.update(m16, nnx.state(stage2))
  m16.eval()
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(m16, nnx.Param)))
  out = np.asarray(forward(m16, _images())["au_probs"], dtype=np.float32)
  assert np.abs(out - ref).max() <= 0.05, np.abs(out - ref).max()


def test_stage2_starts_from_stage1(stage1):
  s2 = Stage2Model("resnet18", 5, rngs=nnx.Rngs(7))
  init_stage2_from_stage1(s2, stage1)
  for name in ("backbone", "global_linear", "afg", "sc"):
    a = jax.tree.leaves(nnx.state(getattr(s2, name)))
    b = jax.tree.leaves(nnx.state(getattr(stage1, name)))
    assert all(np.array_equal(x, y) for x, y in zip(a, b)), name
  with pytest.raises(ValueError, match="does not match"):
    init_stage2_from_stage1(Stage2Model("resnet18", 4, rngs=nnx.Rngs(0)), stage1)


def test_unknown_backbone_and_metric_are_clear_errors():
  with pytest.raises(ValueError, match="resnet50"):
    Stage1Model("resnet51", 5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="dots"):
    Stage1Model("resnet18", 5, metric="euclid", rngs=nnx.Rngs(0))


def test_ablation_variants():
  from megraph_jax.models.megraph import BaselineModel  # pylint: disable=import-outside-toplevel

  m = Stage1Model("resnet18", 4, use_fgg=False, rngs=nnx.Rngs(0))
  m.eval()
  o = forward(m, _images(2))
  assert o["au_probs"].shape == (2, 4) and "adjacency" not in o and m.fgg is None
  b = BaselineModel("resnet18", 4, rngs=nnx.Rngs(0))
  b.eval()
  p = np.asarray(forward(b, _images(2))["au_probs"])
  assert p.shape == (2, 4) and np.all((p > 0) & (p < 1))


# Every model of the family: registered under (head, stage), its spec read back from the instance, the output
# contract (trunk.ModelOutput) and what its relation-graph picture shows.
FAMILY = [
  ("megraph", 1, dict(neighbor_num=3, metric="cosine"), {"adjacency"}, {"node_features", "adjacency"}),
  ("megraph", 1, dict(use_fgg=False), {"adjacency"}, {"node_features"}),
  ("megraph", 2, dict(gnn_layers=1), {"adjacency", "edge_strength"}, {"node_features", "edge_features", "edge_logits"}),
  ("baseline", 1, {}, set(), {"au_logits"}),
  ("opengraphau", 1, dict(neighbor_num=5), {"adjacency"}, {"node_features", "adjacency"}),
  ("opengraphau", 2, dict(gnn_layers=3), {"adjacency", "edge_strength"}, {"node_features", "edge_features"}),
]


@pytest.mark.parametrize("head,stage,fields,graph,outputs", FAMILY)
def test_model_family_as_data(head, stage, fields, graph, outputs):
  from megraph_jax.model_factory import MODELS, ModelSpec, build  # pylint: disable=import-outside-toplevel

  n = 41 if head == "opengraphau" else 5
  spec = ModelSpec("resnet18", n, stage=stage, head=head, img_size=IMG, **fields)
  model = nnx.eval_shape(lambda: build(spec))
  assert type(model) is MODELS[(head, stage)] and (model.HEAD, model.STAGE) == (head, stage)
  assert ModelSpec.of(model) == spec  # every field, read from the instance
  graphdef, state = nnx.split(model)

  def run(state, x):
    m = nnx.merge(graphdef, state)
    out = m(x)
    return out, m.relation_graph(out, 2)

  out, pictures = jax.eval_shape(run, state, jax.ShapeDtypeStruct((2, IMG, IMG, 3), jnp.float32))
  assert out["au_probs"].shape == (2, n) and set(out) == {"au_probs"} | outputs
  assert set(pictures) == graph
  nodes = 27 if head == "opengraphau" else n
  for v in pictures.values():
    assert v.shape == (2, nodes, nodes)
