"""megraph_jax.numerics: the layout choice both ways (same parameters, same numbers, different programs), the
platform decision and its log line, and the matmul-precision switch reaching every traced dot and conv."""

import logging

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from megraph_jax import model_factory, numerics, sharding
from megraph_jax.model_factory import ModelSpec
from megraph_jax.models.layers import FlatLinear, PointwiseConv
from megraph_jax.train import stage as train
from megraph_jax.train.train_state import TrainState


def _primitives(fn, *args) -> list:
  """Every equation of ``fn``'s jaxpr, sub-jaxprs included."""
  out = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      out.append(eqn)
      for p in eqn.params.values():
        for sub in p if isinstance(p, (list, tuple)) else (p,):
          if isinstance(sub, jex.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jex.Jaxpr):
            walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return out


def _count(eqns: list, name: str) -> int:
  return sum(e.primitive.name == name for e in eqns)


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_conv_layouts_agree(stride):
  conv = PointwiseConv(16, 24, kernel_size=(1, 1), strides=(stride, stride), padding="VALID", rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 9, 9, 16))

  def loss(m, x):
    return jnp.sum(jnp.sin(m(x)))

  results = {}
  for layout in ("cpu", "plain"):
    with numerics.compute_settings(layout=layout):
      y = conv(x)
      g = nnx.grad(loss)(conv, x)
      eqns = _primitives(lambda x: conv(x), x)
    results[layout] = (y, g, _count(eqns, "conv_general_dilated"), _count(eqns, "dot_general"))
  (y_cpu, g_cpu, conv_cpu, dot_cpu), (y_plain, g_plain, conv_plain, dot_plain) = results["cpu"], results["plain"]
  assert (conv_cpu, dot_cpu) == (0, 1) and (conv_plain, dot_plain) == (1, 0)  # the two paths are different programs
  np.testing.assert_allclose(y_cpu, y_plain, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_cpu), jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_flat_linear_layouts_agree():
  lin = FlatLinear(12, 5, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(2), (3, 7, 12))
  shapes = {}
  for layout in ("cpu", "plain"):
    with numerics.compute_settings(layout=layout):
      (dot,) = [e for e in _primitives(lambda x: lin(x), x) if e.primitive.name == "dot_general"]
      shapes[layout] = (dot.invars[0].aval.shape, lin(x))
  assert shapes["cpu"][0] == (21, 12) and shapes["plain"][0] == (3, 7, 12)
  np.testing.assert_allclose(shapes["cpu"][1], shapes["plain"][1], rtol=1e-6, atol=1e-6)


def test_auto_layout_follows_the_platform_and_logs_it(caplog):
  caplog.set_level(logging.INFO)
  numerics._logged.clear()
  with numerics.compute_settings(platform="gpu"):
    assert not numerics.cpu_layouts()
  with numerics.compute_settings(platform="tpu"):
    assert not numerics.cpu_layouts()
  with numerics.compute_settings(platform="cpu"):
    assert numerics.cpu_layouts()
  assert numerics.cpu_layouts() == (jax.default_backend() == "cpu")  # outside any step: this process's backend
  with numerics.compute_settings(platform="gpu", layout="cpu"):
    assert numerics.cpu_layouts()  # forced
  text = caplog.text
  assert "layouts for gpu: plain nnx.Conv/Linear" in text and "layouts for cpu: 2-D matmul" in text
  assert text.count("layouts for gpu") == 1  # once per platform


def test_train_step_same_numbers_on_both_layouts():
  """The jitted stage-2 train step (ResNet: 1x1 downsample convs, the head's Linears), forced to each layout: same
  loss, gradients (AdamW's first moment after one step: (1 - b1) x the gradient) and BatchNorm statistics, from
  different programs."""
  spec = ModelSpec("resnet18", 4, stage=2, img_size=32)
  model = model_factory.build(spec, seed=0)
  model.train()
  tx, _ = train.make_optimizer(_config(), 2, nnx.state(model, nnx.Param), 10)
  graphdef, state = nnx.split(TrainState(model, tx))
  rng = np.random.default_rng(0)
  labels = (rng.random((4, 4)) > 0.5).astype(np.float32)
  batch = {
    "image": rng.normal(size=(4, 32, 32, 3)).astype(np.float32),
    "label": labels,
    "relation": (2 * labels[:, :, None] + labels[:, None, :]).reshape(4, -1).astype(np.int32),
  }
  mesh = sharding.make_mesh()
  out = {}
  for layout in ("cpu", "plain"):
    step = train.jit_train_step(graphdef, jnp.ones(4), 0.05, mesh, layout=layout)
    convs = step.lower(state, batch).as_text().count("convolution")
    new, metrics = step(state, batch)
    flat = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(new)}
    grads = [v for p, v in sorted(flat.items(), key=str) if "mu" in p]  # [(1 - b1) x gradient] per parameter
    stats = [v for p, v in sorted(flat.items(), key=str) if p[0] == "model" and p[-1] in ("mean", "var")]
    out[layout] = (convs, metrics, grads, stats)
  assert out["plain"][0] > out["cpu"][0]  # the 1x1 convs are convolutions only on the plain path
  for k in ("total", "wa", "edge", "grad_norm"):
    np.testing.assert_allclose(out["cpu"][1][k], out["plain"][1][k], rtol=1e-5, err_msg=k)
  assert len(out["cpu"][2]) == len(nnx.to_flat_state(nnx.state(model, nnx.Param))) > 0
  assert len(out["cpu"][3]) == len(nnx.to_flat_state(nnx.state(model, nnx.BatchStat))) > 0
  for i in (2, 3):
    assert len(out["cpu"][i]) == len(out["plain"][i])
    assert sum(np.abs(b).max() > 0 for b in out["plain"][i]) >= 0.9 * len(out["plain"][i])  # few exact zeros
    for a, b in zip(out["cpu"][i], out["plain"][i]):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(b))))  # float32 sum order


def _config():
  from configs import default  # pylint: disable=import-outside-toplevel

  return default.get_config()


def test_precision_switch_reaches_every_dot_and_conv():
  spec = ModelSpec("resnet18", 4, stage=2, img_size=32)
  model = model_factory.eval_view(model_factory.build(spec))
  graphdef, state = nnx.split(model)
  x = jnp.zeros((1, 32, 32, 3))

  def fwd(state, x):
    return nnx.merge(graphdef, state)(x)["au_probs"]

  for name, want in (("default", None), ("highest", jax.lax.Precision.HIGHEST), ("high", jax.lax.Precision.HIGH)):
    eqns = _primitives(numerics.traced_with(fwd, precision=name), state, x)
    ops = [e for e in eqns if e.primitive.name in ("dot_general", "conv_general_dilated")]
    assert _count(ops, "conv_general_dilated") > 0 and _count(ops, "dot_general") > 0
    for e in ops:
      p = e.params["precision"]
      got = p if p is None or isinstance(p, jax.lax.Precision) else p[0]
      assert got == want or (want is None and p in (None, (None, None))), (name, e.primitive.name, p)


def test_step_options_carry_precision_and_refuse_unknown_values():
  config = _config()
  config.model.precision = "highest"
  assert train.step_options(config)["precision"] == "highest"
  config.model.precision = "fast"
  with pytest.raises(ValueError, match="model.precision.*default, high, highest"):
    train.step_options(config)
  config.model.precision = "default"
  config.model.layout = "gpu"
  with pytest.raises(ValueError, match="model.layout.*auto, cpu, plain"):
    train.step_options(config)
