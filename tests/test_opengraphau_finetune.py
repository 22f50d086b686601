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


def test_sam_step_keeps_first_pass_batch_statistics_and_changes_the_update():
  spec = ModelSpec("resnet18", N, 1, head="opengraphau", img_size=32)
  rng = np.random.default_rng(2)
  batch = {
    "image": rng.normal(size=(4, 32, 32, 3)).astype(np.float32),
    "label": rng.choice([-1.0, 0.0, 1.0], size=(4, N)).astype(np.float32),
  }
  out = {}
  for rho in (0.0, 2.0):
    model = build(spec, seed=0)
    params = nnx.state(model, nnx.Param)
    tx, _ = optim.create_optimizer(params, learning_rate=1e-3, total_steps=10, weight_decay=5e-4, b1=0.9, b2=0.999,
                                   eps=1e-8)  # fmt: skip
    graphdef, state = nnx.split(TrainState(model, tx))
    step = jit_train_step(graphdef, jnp.ones(N), 0.0, sharding.make_mesh(), wa_loss="opengraphau", sam_rho=rho)
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["total"]))
    out[rho] = (nnx.to_flat_state(nnx.state(nnx.merge(graphdef, state).model, nnx.BatchStat)),
                nnx.to_flat_state(nnx.state(nnx.merge(graphdef, state).model, nnx.Param)))  # fmt: skip
  for (p, a), (_, b) in zip(*(out[r][0] for r in (0.0, 2.0))):  # the second pass left the statistics alone
    np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(p))
  diffs = [
    float(np.max(np.abs(np.asarray(a[...]) - np.asarray(b[...]))))
    for (_, a), (_, b) in zip(*(out[r][1] for r in (0.0, 2.0)))
  ]
  assert max(diffs) > 0  # the gradient at w + e(w) differs from the one at w


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
