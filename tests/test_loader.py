"""One spec, one factory, one loader: ModelSpec JSON (old model.json files too), every checkpoint kind, dtypes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import forward
from PIL import Image

from megraph_jax import checkpointing, convert, loader
from megraph_jax.model_factory import ModelSpec, build, eval_view
from megraph_jax.models.megraph import BaselineModel, Stage1Model, Stage2Model
from megraph_jax.predict import predictor as predict
from megraph_jax.train.train_state import TrainState

pytestmark = pytest.mark.precision("highest")  # parity with the official model / references to ~1e-7

IMG = 64
SPECS = [
  ModelSpec("resnet18", 4, 1, img_size=IMG, neighbor_num=3, metric="cosine"),
  ModelSpec("resnet18", 4, 1, img_size=IMG, use_fgg=False),
  ModelSpec("resnet18", 4, 1, img_size=IMG, head="baseline", au_names=("AU1", "AU2", "AU4", "AU6")),
  ModelSpec("resnet18", 4, 2, img_size=IMG, gnn_layers=1, dtype="bfloat16"),
]


def _images(n=2, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, IMG, IMG, 3)).astype("f4"))


def _params(model):
  return jax.tree.leaves(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.head}{s.stage}{'' if s.use_fgg else '-nofgg'}")
def test_spec_json_round_trip_and_spec_of_model(spec):
  assert ModelSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
  assert spec.to_json()["family"] == "resnet"
  model = nnx.eval_shape(lambda: build(spec))
  assert ModelSpec.of(model, au_names=spec.au_names) == spec


def test_old_model_json_files_still_load():
  """Keys written by training (initialization.model_json) and by convert (model_config) before the spec."""
  train_s1 = {
    "backbone": "resnet50",
    "num_aus": 12,
    "stage": 1,
    "img_size": 224,
    "au_names": [f"AU{i}" for i in range(12)],
    "neighbor_num": 4,
    "metric": "dots",
    "use_fgg": False,
  }
  train_s2 = {"backbone": "resnet50", "num_aus": 8, "stage": 2, "img_size": 224, "au_names": None, "gnn_layers": 2}
  train_baseline = {
    "backbone": "resnet18",
    "num_aus": 3,
    "stage": 1,
    "img_size": 96,
    "au_names": ["AU1", "AU2", "AU6"],
    "head": "baseline",
  }
  convert_s1 = {
    "backbone": "swin_transformer_tiny",
    "num_aus": 8,
    "stage": 1,
    "img_size": 224,
    "neighbor_num": 3,
    "metric": "dots",
  }
  assert ModelSpec.from_json(train_s1) == ModelSpec("resnet50", 12, 1, au_names=train_s1["au_names"], use_fgg=False)
  assert ModelSpec.from_json(train_s2) == ModelSpec("resnet50", 8, 2)
  assert ModelSpec.from_json(train_baseline) == ModelSpec(
    "resnet18", 3, 1, head="baseline", img_size=96, au_names=("AU1", "AU2", "AU6")
  )
  assert ModelSpec.from_json(convert_s1) == ModelSpec("swin_transformer_tiny", 8, 1, neighbor_num=3)
  assert ModelSpec.from_json(convert_s1).family == "swin"
  with pytest.raises(ValueError, match="unknown keys"):
    ModelSpec.from_json({**convert_s1, "neighbour_num": 3})
  with pytest.raises(ValueError, match="2 AU names"):
    ModelSpec.from_json({**convert_s1, "au_names": ["a", "b"]})
  with pytest.raises(ValueError, match="only one stage"):
    ModelSpec("resnet18", 3, 2, head="baseline")


def _stage_dir(tmp_path, spec, model_json):
  """A training stage directory: best/ holds model A (step 1), checkpoints/ model B (step 2), old model.json."""
  stage_dir = str(tmp_path / "fold1" / f"stage{spec.stage}")
  a, b = build(spec, seed=1), build(spec, seed=2)
  ckpt = checkpointing.StageCheckpoints(stage_dir)
  ckpt.save(1, nnx.state(TrainState(a, optax.adamw(1e-3))))  # as training writes them: model + optimizer
  ckpt.save_best(1, nnx.state(a), {"mean_f1": 0.5})
  ckpt.save(2, nnx.state(TrainState(b, optax.adamw(1e-3))))
  ckpt.wait()
  ckpt.close()
  checkpointing.write_model_json(stage_dir, model_json)
  return stage_dir, eval_view(a), eval_view(b)


def test_stage_dir_best_latest_and_float64(tmp_path):
  spec = ModelSpec("resnet18", 4, 1, img_size=IMG, au_names=("AU1", "AU2", "AU4", "AU6"))
  old = {
    "backbone": "resnet18",
    "num_aus": 4,
    "stage": 1,
    "img_size": IMG,
    "au_names": list(spec.au_names),
    "neighbor_num": 4,
    "metric": "dots",
    "use_fgg": True,
  }  # as training wrote it before the spec
  stage_dir, a, b = _stage_dir(tmp_path, spec, old)
  x = _images()
  for path, kw, want in (
    (stage_dir, {}, a),
    (os.path.join(stage_dir, "best"), {}, a),
    (os.path.join(stage_dir, "checkpoints"), {}, b),
    (stage_dir, {"which": "latest"}, b),
  ):
    model, got_spec = loader.load(path, **kw)
    assert got_spec == spec and isinstance(model, Stage1Model)
    np.testing.assert_array_equal(np.asarray(forward(model, x)["au_probs"]), np.asarray(forward(want, x)["au_probs"]))
  with jax.enable_x64(True):
    model, got_spec = loader.load(stage_dir, dtype=jnp.float64)
    assert got_spec.dtype == "float64" and {p.dtype for p in _params(model)} == {jnp.dtype("float64")}
    probs = forward(model, x.astype(jnp.float64))["au_probs"]
    assert probs.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(probs), np.asarray(forward(a, x)["au_probs"]), atol=1e-5)


def test_official_pth_float64(tmp_path):
  pytest.importorskip("torchvision")
  from test_convert import _official_checkpoint  # pylint: disable=import-outside-toplevel

  path, _, _ = _official_checkpoint(tmp_path, 2)
  ref, spec = loader.load(path, img_size=IMG)
  assert (spec.backbone, spec.num_aus, spec.stage, spec.dtype) == ("resnet18", 4, 2, "float32")
  with jax.enable_x64(True):
    model, spec64 = loader.load(path, img_size=IMG, dtype="float64")
    assert spec64 == spec.replace(dtype="float64")
    assert {p.dtype for p in _params(model)} == {jnp.dtype("float64")}
    x = _images()
    probs = forward(model, x.astype(jnp.float64))["au_probs"]
    np.testing.assert_allclose(np.asarray(probs), np.asarray(forward(ref, x)["au_probs"]), atol=1e-5)


def _predict_one(tmp_path, ckpt):
  """CLI on one crop (no alignment) -> the JSON row; and the API's result for the same crop."""
  crop = np.random.default_rng(3).integers(0, 256, (80, 80, 3), dtype=np.uint8)
  Image.fromarray(crop).save(tmp_path / "face.png")
  out = tmp_path / "pred.json"
  assert predict.main(["-c", str(ckpt), str(tmp_path / "face.png"), "-o", str(out), "--no-align", "--no-progress"]) == 0
  (row,) = json.loads(out.read_text())["predictions"]
  (p,) = predict.Predictor.from_checkpoint(ckpt, align=False).predict_image(crop)
  return row, p


@pytest.mark.parametrize("head,use_fgg", [("megraph", False), ("baseline", True)])
def test_no_fgg_and_baseline_stage1_convert_and_predict(tmp_path, head, use_fgg):
  spec = ModelSpec("resnet18", 4, 1, head=head, use_fgg=use_fgg, img_size=IMG, au_names=("A", "B", "C", "D"))
  stage_dir, a, _ = _stage_dir(tmp_path, spec, spec.to_json())
  out = str(tmp_path / "converted")
  assert convert.main([stage_dir, out]) == 0
  model, got = loader.load(out)
  assert got == spec and isinstance(model, BaselineModel if head == "baseline" else Stage1Model)
  x = _images()
  np.testing.assert_array_equal(np.asarray(forward(model, x)["au_probs"]), np.asarray(forward(a, x)["au_probs"]))
  row, p = _predict_one(tmp_path, out)
  assert row["status"] == "ok" and list(row["probs"]) == ["A", "B", "C", "D"]
  np.testing.assert_allclose(p.probs, [row["probs"][k] for k in "ABCD"], atol=1e-4)
  assert (p.adjacency is None) == (head == "baseline") and p.edge_strength is None
  pics = predict.Predictor(model, align=False).save_plots(p, str(tmp_path / "pics"))
  assert len(pics) == (1 if head == "baseline" else 2) and all(os.path.isfile(f) for f in pics)


def test_official_stage1_without_fgg_converts_and_predicts(tmp_path):
  """An official-layout stage-1 .pth with no head.gnn (trained with use_fgg=False) is read as such."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  from test_convert import _official_checkpoint  # pylint: disable=import-outside-toplevel

  path, _, _ = _official_checkpoint(tmp_path, 1)
  sd = torch.load(path, weights_only=True)
  sd["state_dict"] = {k: v for k, v in sd["state_dict"].items() if ".head.gnn." not in k}
  torch.save(sd, path)
  model, spec = loader.load(path, img_size=IMG)
  assert spec.stage == 1 and not spec.use_fgg and model.fgg is None
  out = str(tmp_path / "converted")
  assert convert.main([path, out, "--img-size", str(IMG)]) == 0
  assert loader.load(out)[1] == spec
  row, _ = _predict_one(tmp_path, out)
  assert row["status"] == "ok"
  with pytest.raises(ValueError, match="use_fgg=True"):
    loader.load_official_state_dict(build(spec.replace(use_fgg=True)), torch_free(sd["state_dict"]), source="x")


def torch_free(state_dict):
  return {k.removeprefix("module."): v.numpy() for k, v in state_dict.items()}


def test_errors_name_the_kinds(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such checkpoint"):
    loader.load(tmp_path / "nothing")
  with pytest.raises(ValueError, match="not a megraph-jax checkpoint.*official .pth"):
    loader.load(tmp_path)
  assert isinstance(build(ModelSpec("resnet18", 4, 2, img_size=IMG)), Stage2Model)
