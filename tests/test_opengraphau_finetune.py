"""Fine-tuning OpenGraphAU with the trainer: its layout without folds, label -1 left out, SAM, a released file.

The "released" stage-1 file is an official-format ``.pth`` with the official key names and shapes (from the golden
file of tools/make_opengraphau_golden.py) and seeded weights.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import official_tensors, write_official_pth
from PIL import Image

from megraph_jax import loader, sharding, task
from megraph_jax.data import datasets
from megraph_jax.metrics import confusion_counts
from megraph_jax.model_factory import ModelSpec, build
from megraph_jax.train import optim
from megraph_jax.train.experiment import run
from megraph_jax.train.stage import jit_train_step
from megraph_jax.train.train_state import TrainState

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden_opengraphau.npz")
N = len(task.OPENGRAPHAU_AUS)


def _hybrid(root: str, n_train: int = 16, n_val: int = 8, seed: int = 0) -> str:
  """OpenGraphAU's layout: img/, list/hybrid_{train,val,test}_{img_path,label}.txt, hybrid_train_weight.txt."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, "list"), exist_ok=True)
  for split, n in (("train", n_train), ("val", n_val), ("test", n_val)):
    paths = []
    for k in range(n):
      p = f"{split}/{k}.png"
      os.makedirs(os.path.join(root, "img", split), exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(os.path.join(root, "img", p))
      paths.append(p)
    labels = rng.choice([-1, 0, 1], size=(n, N), p=[0.3, 0.4, 0.3])
    labels[0] = 1  # every AU has a positive training label (finite class weights)
    with open(os.path.join(root, "list", f"hybrid_{split}_img_path.txt"), "w") as f:
      f.write("".join(p + "\n" for p in paths))
    np.savetxt(os.path.join(root, "list", f"hybrid_{split}_label.txt"), labels, fmt="%d")
    if split == "train":
      weights = task.class_weights(labels)
      np.savetxt(os.path.join(root, "list", "hybrid_train_weight.txt"), weights[None], fmt="%.6f")
  return root


def _config(root: str, **overrides):
  from configs import opengraphau_resnet50  # pylint: disable=import-outside-toplevel

  config = opengraphau_resnet50.get_config()
  config.dataset.root = root
  config.model.backbone = "resnet18"
  config.model.init = "random"
  config.dataset.image_size = 36
  config.dataset.crop_size = 32
  config.batch_size = 8
  config.eval_batch_size = 8
  config.stage1.epochs = 1
  config.stage2.epochs = 1
  config.log_every_steps = 1
  config.update_from_flattened_dict(overrides)
  return config


def test_hybrid_layout_reads_minus_one_and_val(tmp_path):
  root = _hybrid(str(tmp_path / "h"))
  val = datasets.read_split(root, "hybrid", 0, "val")
  assert val.labels.shape == (8, N) and set(np.unique(val.labels)) <= {-1, 0, 1}
  assert np.all(val.relations[val.labels[:, :1].repeat(N, 1).reshape(8, N)[:, 0] == -1][:, :N] == -1)
  w = datasets.load_class_weights(root, "hybrid", 0)
  np.testing.assert_allclose(w, task.class_weights(datasets.read_split(root, "hybrid", 0, "train").labels), atol=1e-5)
  with pytest.raises(ValueError, match="only in the layout without folds"):
    datasets.read_split(root, "hybrid", 1, "val")
  bp4d = tmp_path / "b"
  os.makedirs(bp4d / "list")
  np.savetxt(bp4d / "list" / "BP4D_train_label_fold1.txt", -np.ones((1, 12)), fmt="%d")
  (bp4d / "list" / "BP4D_train_img_path_fold1.txt").write_text("a.png\n")
  with pytest.raises(datasets.DatasetError, match="line 1"):  # -1 is not a BP4D label value
    datasets.read_split(str(bp4d), "BP4D", 1, "train", check_images=False)


def test_minus_one_is_left_out_of_weights_and_metrics():
  rng = np.random.default_rng(0)
  labels = rng.choice([-1, 0, 1], size=(30, 5))
  labels[0] = 1
  as_nine = np.where(labels == -1, task.UNLABELLED, labels)
  np.testing.assert_array_equal(task.class_weights(labels), task.class_weights(as_nine))
  probs = rng.random((30, 5)).astype(np.float32)
  counts = np.asarray(confusion_counts(jnp.asarray(probs), jnp.asarray(labels, jnp.float32), jnp.ones(30)))
  sk = pytest.importorskip("sklearn.metrics")
  for j in range(5):
    known = labels[:, j] >= 0
    tn, fp, fn, tp = sk.confusion_matrix(labels[known, j], probs[known, j] >= 0.5, labels=[0, 1]).ravel()
    assert counts[j].tolist() == [tp, fp, tn, fn]


def test_sam_perturbation_is_the_official_formula():
  rng = np.random.default_rng(1)
  w = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(5,))}
  g = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(5,))}
  for adaptive in (True, False):
    t = {k: (np.abs(w[k]) if adaptive else 1.0) * g[k] for k in w}
    norm = np.sqrt(sum(np.sum(v**2) for v in t.values()))
    want = {k: (w[k] ** 2 if adaptive else 1.0) * g[k] * 2.0 / (norm + 1e-12) for k in w}
    got = optim.sam_perturbation(jax.tree.map(jnp.asarray, w), jax.tree.map(jnp.asarray, g), rho=2.0, adaptive=adaptive)
    for k in w:
      np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-5, atol=1e-7)


def _flat(state) -> dict:
  return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


def _loss_grad(spec, batch):
  """(initial params, jitted ``params -> (grad, (loss, BatchNorm statistics after the pass))``): jax.grad of the loss
  of a pure function of the parameters, the model of ``spec`` (seed 0) in train mode on ``batch``."""
  graphdef, params, stats, rest = nnx.split(build(spec, seed=0), nnx.Param, nnx.BatchStat, ...)

  def loss(p, images):
    m = nnx.merge(graphdef, p, stats, rest, copy=True)
    total = task.loss_terms(m(images), batch, jnp.ones(N), 0.0, wa_loss="opengraphau")["total"]
    return total, (total, nnx.state(m, nnx.BatchStat))

  grad = jax.jit(jax.grad(loss, has_aux=True))
  return params, lambda p: grad(p, batch["image"])


def _sam_reference(params, grad, *, rho, adaptive, lr, wd, eps):
  """One step written from the algorithm (OpenGraphAU's ``sam.py`` around ``torch.optim.AdamW``): g = grad at w (this
  pass sets the BatchNorm statistics), e = rho T(w)^2 g / ||T(w) g||, T(w) = |w| (ASAM) or 1, g' = grad at w + e,
  AdamW's first step from w with g'. Returns (params, statistics, loss, |g'|)."""
  g, (total, new_stats) = grad(params)
  if rho:
    t = jax.tree.map(lambda w, g: (jnp.abs(w) if adaptive else 1.0) * g, params, g)
    scale = rho / jnp.sqrt(sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(t)))
    # in float32 as the step computes it: w + e is where the gradient is taken, and a deep net at a point moved that
    # far amplifies a last-bit difference of w + e ~1000 times in its gradient
    g, _ = grad(jax.tree.map(lambda w, g: w + (jnp.square(w) if adaptive else 1.0) * g * scale, params, g))
  w = {k: v.astype(np.float64) for k, v in _flat(params).items()}
  g = {k: v.astype(np.float64) for k, v in _flat(g).items()}
  # torch.optim.AdamW, step 1: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected to g and g^2
  new_w = {k: w[k] - lr * (g[k] / (np.abs(g[k]) + eps) + wd * w[k]) for k in w}
  grad_norm = np.sqrt(sum(np.sum(v**2) for v in g.values()))
  return new_w, _flat(new_stats), float(total), grad_norm


def test_sam_step_is_the_sam_algorithm():
  """The jitted train step with SAM (ASAM rho 2 as OpenGraphAU, and plain SAM) against ``_sam_reference``: the
  parameters, every BatchNorm statistic (the first pass's), the loss at w and the norm of the gradient at w + e.

  In float64: at w + e a deep net amplifies a last-bit difference of the point 1e3..1e6 times in its gradient, so in
  float32 two correct implementations differ by up to 1e-4 of the gradient. Measured in float64 (x86 CPU): ASAM
  rho 2 parameters 2e-10 (2e-7 lr) and |g'| 2e-10 relative; plain SAM rho 0.05 3e-13. A wrong sign of e or the
  gradient taken at w instead moves parameters by ~lr and |g'| by > 10%."""
  with jax.enable_x64(True):
    spec = ModelSpec("resnet18", N, 1, head="opengraphau", img_size=32, dtype="float64")
    rng = np.random.default_rng(2)
    batch = {"image": rng.normal(size=(4, 32, 32, 3)), "label": rng.choice([-1.0, 0.0, 1.0], size=(4, N))}
    # eps 1e-3 (official 1e-8): Adam's first step is then g / (|g| + eps), not sign(g): it shows the gradient's size
    lr, wd, eps = 1e-3, 5e-4, 1e-3
    w0, grad = _loss_grad(spec, batch)
    plain = _sam_reference(w0, grad, rho=0.0, adaptive=True, lr=lr, wd=wd, eps=eps)[0]  # AdamW alone
    for rho, adaptive in ((2.0, True), (0.05, False)):
      model = build(spec, seed=0)
      tx, _ = optim.create_optimizer(nnx.state(model, nnx.Param), learning_rate=lr, total_steps=10, weight_decay=wd,
                                     b1=0.9, b2=0.999, eps=eps)  # fmt: skip
      graphdef, state = nnx.split(TrainState(model, tx))
      step = jit_train_step(graphdef, jnp.ones(N, jnp.float64), 0.0, sharding.make_mesh(), wa_loss="opengraphau",
                            sam_rho=rho, sam_adaptive=adaptive)  # fmt: skip
      state, metrics = step(state, batch)
      trained = nnx.merge(graphdef, state).model
      got_w, got_stats = _flat(nnx.state(trained, nnx.Param)), _flat(nnx.state(trained, nnx.BatchStat))
      want_w, want_stats, want_loss, want_norm = _sam_reference(w0, grad, rho=rho, adaptive=adaptive, lr=lr, wd=wd,
                                                                eps=eps)  # fmt: skip
      tag = f"rho={rho} adaptive={adaptive}"
      assert got_w.keys() == want_w.keys() and got_stats.keys() == want_stats.keys() and len(got_stats) > 40, tag
      dw = {k: np.abs(got_w[k] - want_w[k]).max() for k in want_w}
      worst = max(dw, key=dw.get)
      stat = max(np.abs(got_stats[k] - want_stats[k]).max() for k in want_stats)
      norm = abs(float(metrics["grad_norm"]) / want_norm - 1)
      print(f"{tag}: parameters {dw[worst]:.1e} ({worst}), statistics {stat:.1e}, |g'| {norm:.1e} off; lr {lr}")
      assert dw[worst] < 1e-5 * lr, f"{tag}: {worst} {dw[worst]:.3g} off the reference step (it moves it ~lr)"
      assert stat < 1e-12, f"{tag}: BatchNorm statistics {stat:.3g} off the first pass's"
      assert norm < 1e-7, f"{tag}: the gradient at w + e has a norm {norm:.3g} relative off the reference's"
      np.testing.assert_allclose(float(metrics["total"]), want_loss, rtol=1e-12, err_msg=tag)
      assert max(np.abs(got_w[k] - plain[k]).max() for k in plain) > 0.1 * lr  # SAM changed the step


def test_finetune_from_a_released_checkpoint(tmp_path):
  """Mode 'train' from an official-format stage-1 file: stage 1 with lr 0 keeps its weights (SAM steps restore w),
  stage 2 starts from stage 1 and trains; both evaluate on 'val' with 41 AU columns."""
  root = _hybrid(str(tmp_path / "hybrid"))
  with np.load(GOLDEN) as z:
    tensors = official_tensors({k: z[k] for k in z.files}, "full/r18_s1", seed=11)
  pth = str(tmp_path / "OpenGprahAU-ResNet18_first_stage.pth")
  write_official_pth(tensors, pth)
  config = _config(root, init_from=pth, **{"stage1.learning_rate": 0.0})
  workdir = str(tmp_path / "work")
  result = run(config, workdir)
  fold = result.folds[0]
  assert fold.num_test == 8 and set(fold.stages) == {1, 2}
  for s in (1, 2):
    assert list(fold.stages[s].last.f1) == list(task.OPENGRAPHAU_AUS) and np.isfinite(fold.stages[s].last.loss)
  with open(os.path.join(workdir, "fold0", "stage1", "config.json")) as f:
    assert json.load(f)["init"] == os.path.abspath(pth)
  released = loader.load(pth, img_size=32)[0]
  tuned = loader.load(os.path.join(workdir, "fold0", "stage1", "checkpoints"))[0]
  want = dict(nnx.to_flat_state(nnx.state(released, nnx.Param)))
  for p, v in nnx.to_flat_state(nnx.state(tuned, nnx.Param)):
    np.testing.assert_array_equal(np.asarray(v[...]), np.asarray(want[p][...]), err_msg=str(p))
  stage2 = loader.load(os.path.join(workdir, "fold0", "stage2", "checkpoints"))[0]
  assert type(stage2).__name__ == "OpenGraphAUStage2"
  # Mode 'eval' of that stage-2 checkpoint reports it as stage 2 (it was labelled stage 1: an isinstance check)
  evaluated = run(_config(root, mode="eval", checkpoint=os.path.join(workdir, "fold0", "stage2")), str(tmp_path / "ev"))
  assert set(evaluated.folds[0].stages) == {2}
