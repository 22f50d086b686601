"""Training parity with the official ME-GraphAU loop: both stages and the hand-over, float64, a few steps.

tests/data/golden_train.npz was written by tools/make_train_golden.py, which runs the official
``train_stage1.train`` / ``train_stage2.train`` (official AdamW settings, ``adjust_learning_rate`` per
iteration, weighted asymmetric loss with class weights, + lambda * cross-entropy on the relation labels,
BatchNorm in train mode) on a resnet18 MEFARG of 5 AUs at 40 px, with the stage-1 checkpoint loaded into
stage 2 by the official ``load_state_dict`` (``strict=False``). Here the same initial weights (regenerated
with NumPy from the tool's :func:`initial_state`) go through our loader (``loader.load_official_state_dict``),
our optimizer (``optim.create_optimizer``), our jitted ``train.train_step`` and our hand-over
(``initialization.copy_weights``), and the losses, learning rates, parameters and BatchNorm statistics are
compared with the official ones. Neither torch nor the official code is needed.

The JAX side runs in a subprocess with JAX_ENABLE_X64=1 (this file is its script), so float64 does not
leak into the other tests of the pytest process.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GOLDEN = os.path.join(HERE, "data", "golden_train.npz")
TOOL = os.path.join(REPO, "tools", "make_train_golden.py")
pytestmark = pytest.mark.precision("highest")  # parity with the official model / references to ~1e-7

# Tolerances. float64 is not exact here: Adam's update g / (sqrt(v) + eps) turns the 1e-17 rounding noise of
# (near-)zero gradients (e.g. of biases just before a BatchNorm) into updates of up to ~1e-9 lr, which
# then feed every later step. Measured (x86 CPU): stage 1 losses 1e-13 relative, parameters 5e-10 lr,
# statistics 1e-11 of their change; stage 2, which starts from stage 1's noise, losses 1.4e-11,
# parameters 1.3e-8 lr, statistics 2e-10 of their change. A real bug is orders of magnitude above.
LOSS_RTOL = {1: 1e-12, 2: 1e-10}
LR_RTOL = 1e-15
PARAM_TOL = {1: 1e-8, 2: 2e-7}  # x the stage's initial lr (one AdamW step moves a parameter by about lr)
STAT_TOL = 1e-8  # x the largest change of that BatchNorm statistic over the stage (~0.1 per step, momentum 0.1)


def _tool():
  """tools/make_train_golden.py as a module (its torch imports live inside ``main``)."""
  spec = importlib.util.spec_from_file_location("make_train_golden", TOOL)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


# ----------------------------------------------------------------------------- the JAX side (subprocess)


def _code_map(model_factory, shapes: dict[str, tuple[int, ...]], stage: int):
  """Where every element of every official tensor lands in our model.

  Loads a state_dict whose values are their own (key, element) codes and reads them back from our
  variables; returns ``export(model) -> {official key: array}`` (the inverse of our loader).
  """
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from megraph_jax import loader  # pylint: disable=import-outside-toplevel

  keys = sorted(k for k in shapes if not k.endswith("num_batches_tracked"))
  scale = 2**23
  assert max(int(np.prod(shapes[k])) for k in keys) < scale
  codes = {
    k: (i * scale + np.arange(int(np.prod(shapes[k])), dtype=np.float64)).reshape(shapes[k]) for i, k in enumerate(keys)
  }
  model = model_factory()
  loader.load_official_state_dict(model, codes, source="codes")
  where = {}  # our leaf path -> (key index, element index) per element
  covered = {k: np.zeros(int(np.prod(shapes[k])), bool) for k in keys}
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
    c = np.asarray(v[...]).reshape(-1)
    assert np.all(c == np.round(c)) and np.all(c >= 0), f"{path}: not set by the loader"
    ki, idx = (c // scale).astype(np.int64), (c % scale).astype(np.int64)
    where[path] = (ki, idx)
    for i in np.unique(ki):
      covered[keys[i]][idx[ki == i]] = True
  assert all(c.all() for c in covered.values()), "some official elements are not in our model"

  def export(m) -> dict[str, np.ndarray]:
    out = {k: np.full(int(np.prod(shapes[k])), np.nan) for k in keys}
    for path, v in nnx.to_flat_state(nnx.state(m, nnx.Any(nnx.Param, nnx.BatchStat))):
      ki, idx = where[path]
      val = np.asarray(jax.device_get(v[...]), np.float64).reshape(-1)
      for i in np.unique(ki):
        out[keys[i]][idx[ki == i]] = val[ki == i]
    return {k: v.reshape(shapes[k]) for k, v in out.items()}

  return export


def _run_stage(model, g, tool, stage: int, first_step: int, lam: float):
  """Our optimizer and jitted train step on the golden batches; returns the trained model and the records."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from megraph_jax import sharding
  from megraph_jax.train import optim  # pylint: disable=import-outside-toplevel
  from megraph_jax.train import stage as train
  from megraph_jax.train.train_state import TrainState  # pylint: disable=import-outside-toplevel

  s = tool.STAGE1 if stage == 1 else tool.STAGE2
  steps = s["epochs"] * s["batches_per_epoch"]
  params = nnx.state(model, nnx.Param)
  tx, schedule = optim.create_optimizer(
    params,
    learning_rate=s["learning_rate"],
    total_steps=steps,
    weight_decay=tool.WEIGHT_DECAY,
    b1=tool.BETAS[0],
    b2=tool.BETAS[1],
    eps=tool.EPS,
  )
  graphdef, state = nnx.split(TrainState(model, tx))
  mesh = sharding.make_mesh()
  state = sharding.put_replicated(state, mesh)  # as train_stage places it
  step_fn = train.jit_train_step(graphdef, jnp.asarray(g["class_weights"], jnp.float64), lam, mesh)
  rec = {"loss": [], "wa": [], "edge": [], "lr": []}
  lr_at = jax.jit(schedule)
  for t in range(steps):
    i = first_step + t
    batch = {
      "image": np.ascontiguousarray(g["images"][i].astype(np.float32).transpose(0, 2, 3, 1)),  # NHWC
      "label": g["labels"][i].astype(np.float32),
    }  # stage 2: relations from our relation_labels
    state, metrics = step_fn(state, sharding.put_batch(batch, sharding.data_sharded(mesh)))
    rec["loss"].append(float(metrics["total"]))
    rec["wa"].append(float(metrics["wa"]))
    rec["edge"].append(float(metrics.get("edge", np.nan)))
    lr = lr_at(jnp.asarray(t, jnp.int32))  # the lr of step t (optax counts from 0)
    rec["lr"].append(float(lr))
    assert lr.dtype == jnp.float64
  return nnx.merge(graphdef, state).model, {k: np.asarray(v) for k, v in rec.items()}


def _adjacency_is_float32() -> bool:
  """Whether the stage-1 FGG builds its 0/1 adjacency, and so D^-1/2 A D^-1/2, in float32 for float64 models."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from megraph_jax.models import fgg  # pylint: disable=import-outside-toplevel

  out = jax.eval_shape(lambda v: fgg.knn_adjacency(v, 2), jax.ShapeDtypeStruct((1, 3, 2), jnp.float64))
  return out.dtype == jnp.float32


def worker(out_path: str) -> None:
  """Both stages on our side; writes summaries (as the tool summarises the official run) to ``out_path``."""
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from megraph_jax import loader, model_factory, task
  from megraph_jax.train import initialization  # pylint: disable=import-outside-toplevel

  assert jax.config.jax_enable_x64
  tool = _tool()
  g = dict(np.load(GOLDEN))
  out = {"fgg_adjacency_float32": np.asarray(_adjacency_is_float32())}
  trained = {}
  for stage in (1, 2):
    cfg = {
      "backbone": tool.BACKBONE,
      "num_aus": tool.NUM_AUS,
      "stage": stage,
      "img_size": tool.IMG,
      "neighbor_num": tool.NEIGHBOR_NUM,
      "metric": "dots",
    }
    shapes = {k[len(f"s{stage}/shape/") :]: tuple(int(x) for x in g[k]) for k in g if k.startswith(f"s{stage}/shape/")}

    def factory(cfg=cfg):  # abstract (no random initialisation to run): the loader sets every variable
      return nnx.eval_shape(lambda: model_factory.build(model_factory.ModelSpec.from_json({**cfg, "dtype": "float64"})))

    export = _code_map(factory, shapes, stage)
    init = tool.initial_state(shapes, stage)
    out[f"s{stage}/init_digest"] = np.asarray(tool.digest(init))
    model = factory()
    loader.load_official_state_dict(model, init, source=f"initial_state(stage {stage})")
    if stage == 1:
      first, lam = 0, 0.0
    else:  # the official resume: a fresh stage-2 model, then the stage-1 weights it shares by name
      initialization.copy_weights(model, trained[1])
      start = export(model)
      out.update(tool.summarize("s2/start", start, init))
      first, lam = tool.STAGE1["epochs"] * tool.STAGE1["batches_per_epoch"], tool.LAM
      rel = jax.jit(task.relation_labels)(g["labels"][first:].reshape(-1, tool.NUM_AUS).astype(np.float32))
      out["s2/relations"] = np.asarray(rel).reshape(g["relations"][first:].shape)
    ref = export(model)
    model, rec = _run_stage(model, g, tool, stage, first, lam)
    out.update({f"s{stage}/{k}": v for k, v in rec.items()})
    out.update(tool.summarize(f"s{stage}/final", export(model), ref))
    trained[stage] = model
  np.savez(out_path, **out)


# ----------------------------------------------------------------------------- the tests


def _run_worker(tmp_dir) -> dict[str, np.ndarray]:
  out = os.path.join(str(tmp_dir), "ours.npz")
  env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, __file__, out], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return dict(np.load(out))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  return dict(np.load(GOLDEN)), _run_worker(tmp_path_factory.mktemp("train_parity"))


def _size(gold, name: str) -> int:
  for stage in (1, 2):
    if f"s{stage}/shape/{name}" in gold:
      return int(np.prod(gold[f"s{stage}/shape/{name}"]))
  raise KeyError(name)


def _check_state(gold, ours, prefix: str, stage: int, *, change: str | None = None, names=None) -> dict[str, float]:
  """Asserts our stored values of ``prefix`` (full tensors, samples, projections) against the official ones.

  Parameters: |diff| <= PARAM_TOL[stage] * lr0; statistics: |diff| <= STAT_TOL * (their change over the
  stage, from ``change``/dmax); a projection sums n element errors, so its tolerance is sqrt(n) times.
  Returns the worst differences in those units.
  """
  change = change or prefix
  lr0 = float(gold[f"cfg/s{stage}_learning_rate"])
  all_names = {k.split("/", 3)[3] for k in gold if k.startswith(prefix + "/dmax/")}
  names = sorted(all_names if names is None else names)
  assert names and set(names) <= all_names
  worst = {"param": 0.0, "stat": 0.0}
  for name in names:
    kind = "stat" if name.endswith(("running_mean", "running_var")) else "param"
    atol = STAT_TOL * float(gold[f"{change}/dmax/{name}"]) if kind == "stat" else PARAM_TOL[stage] * lr0
    for sub in ("full", "sample", "proj"):
      k = f"{prefix}/{sub}/{name}"
      if k in gold:
        tol = atol * (math.sqrt(_size(gold, name)) if sub == "proj" else 1.0)
        diff = float(np.max(np.abs(ours[k] - gold[k])))
        assert diff <= tol, f"{k}: |ours - official| = {diff:.3g} > {tol:.3g}"
        worst[kind] = max(worst[kind], diff / tol)
  return worst


def test_initial_weights_regenerate(runs):
  gold, ours = runs
  for stage in (1, 2):
    assert str(ours[f"s{stage}/init_digest"]) == str(gold[f"s{stage}/init_digest"]), (
      "tools/make_train_golden.initial_state no longer reproduces the golden initial weights"
    )


def test_stage1_matches_official(runs):
  gold, ours = runs
  np.testing.assert_allclose(ours["s1/lr"], gold["s1/lr"], rtol=LR_RTOL, atol=0)
  np.testing.assert_allclose(ours["s1/loss"], gold["s1/loss"], rtol=LOSS_RTOL[1], atol=0)
  print("stage 1 worst (x tolerance):", _check_state(gold, ours, "s1/final", 1))


def test_stage2_starts_from_stage1(runs):
  """The hand-over: shared tensors (backbone, global_linear, class_linears, sc) = trained stage 1, others fresh."""
  gold, ours = runs
  shared = {str(k) for k in gold["s2/shared_keys"]}
  assert any(k.startswith("backbone.") for k in shared) and "head.sc" in shared and len(shared) > 100
  assert not any(k.startswith(("head.gnn.", "head.edge")) for k in shared)
  _check_state(gold, ours, "s2/start", 1, change="s1/final", names=shared)
  fresh = {k.split("/", 3)[3] for k in gold if k.startswith("s2/start/dmax/")} - shared
  for name in fresh:  # the stage-2-only tensors keep their fresh initial values (our loader copies them exactly)
    for sub in ("full", "sample", "proj"):
      k = f"s2/start/{sub}/{name}"
      if k in gold:
        np.testing.assert_array_equal(ours[k], gold[k], err_msg=k)
  np.testing.assert_array_equal(ours["s2/relations"], gold["relations"][-ours["s2/relations"].shape[0] :])


def test_stage2_matches_official(runs):
  gold, ours = runs
  np.testing.assert_allclose(ours["s2/lr"], gold["s2/lr"], rtol=LR_RTOL, atol=0)
  for k in ("wa", "edge", "loss"):
    np.testing.assert_allclose(ours[f"s2/{k}"], gold[f"s2/{k}"], rtol=LOSS_RTOL[2], atol=0, err_msg=k)
  print("stage 2 worst (x tolerance):", _check_state(gold, ours, "s2/final", 2))


def test_fgg_adjacency_follows_model_dtype(runs):
  """models/fgg.knn_adjacency returns the 0/1 adjacency in the model's accumulation dtype.

  In float32 a float64 model would normalise its graph (degree ** -0.5) in float32: the stage-1 losses
  then differed from the official float64 run by 1e-9..1e-7 relative.
  """
  _, ours = runs
  assert not bool(ours["fgg_adjacency_float32"])


SCHEDULE_CHECK = """
import math, jax.numpy as jnp
from megraph_jax.train import optim

init, worst = 1e-4, 0.0
for total in (3, 7, 1000):
  kw = dict(learning_rate=init, total_steps=total, weight_decay=5e-4, b1=0.9, b2=0.999, eps=1e-8)
  _, schedule = optim.create_optimizer({"w": jnp.ones((2, 2), jnp.float64), "b": jnp.ones((2,), jnp.float64)}, **kw)
  _, schedule32 = optim.create_optimizer({"w": jnp.ones((2,), jnp.float32)}, **kw)
  assert schedule(0).dtype == jnp.float64, schedule(0).dtype
  assert schedule32(0).dtype == jnp.float32, schedule32(0).dtype
  for t in range(total):
    official = init * (1 + math.cos(math.pi * t / total)) / 2  # utils.adjust_learning_rate, Python floats
    same = init * math.cos(0.5 * math.pi * t / total) ** 2  # equal, without its cancellation near t = total
    ref = official if 2 * t <= total else same
    worst = max(worst, abs(float(schedule(jnp.asarray(t, jnp.int32))) - ref) / ref)
  assert abs(float(schedule(total))) <= 1e-15 * init  # 0 at the end
assert worst <= 1e-15, f"float64 lr {worst:.3g} relative off the official formula"
print(worst)
"""


def test_float64_schedule_is_the_official_python_float():
  """A float64 model's lr is the official formula to 1e-15 (it was computed in float32: 5e-8 off)."""
  env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", SCHEDULE_CHECK], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
  )
  assert proc.returncode == 0, proc.stderr[-3000:]


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  worker(sys.argv[1])
