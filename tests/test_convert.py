"""Official .pth loading, model dirs and the convert CLI (backbone and head math: test_resnet, test_head_parity)."""

import os
import pickle

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import forward

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from megraph_jax import convert, loader  # noqa: E402
from megraph_jax.errors import CheckpointError  # noqa: E402
from megraph_jax.model_factory import ModelSpec, build  # noqa: E402
from megraph_jax.weights.common import StateDict  # noqa: E402
from megraph_jax.weights.megraph import load_head  # noqa: E402

pytestmark = pytest.mark.precision("highest")  # parity with the official model / references to ~1e-7

N = 4
C_IN, C = 512, 128  # resnet18 features and global_linear width (C_IN / 4)


def _head_tensors(stage, rng):
  """Random tensors under the official key names of global_linear + head (stage 1 or 2)."""
  t = {}

  def lin(name, i, o, bias=True):
    t[name + ".weight"] = rng.normal(0, (2 / o) ** 0.5, (o, i)).astype("f4")
    if bias:
      t[name + ".bias"] = rng.normal(0, 0.02, (o,)).astype("f4")

  def bn(name, c):
    t[name + ".weight"] = (1 + 0.2 * rng.normal(size=c)).astype("f4")
    t[name + ".bias"] = (0.1 * rng.normal(size=c)).astype("f4")
    t[name + ".running_mean"] = (0.1 * rng.normal(size=c)).astype("f4")
    t[name + ".running_var"] = (0.75 + 0.5 * rng.random(c)).astype("f4")
    t[name + ".num_batches_tracked"] = np.array(7)

  lin("global_linear.fc", C_IN, C)
  bn("global_linear.bn", C)
  for i in range(N):
    lin(f"head.class_linears.{i}.fc", C, C)
    bn(f"head.class_linears.{i}.bn", C)
  t["head.sc"] = rng.normal(size=(N, C)).astype("f4")
  if stage == 1:
    lin("head.gnn.U", C, C)
    lin("head.gnn.V", C, C)
    bn("head.gnn.bnv", N)
  else:
    for m in ("FAM", "ARM"):
      lin(f"head.edge_extractor.{m}.linear_q", C, C // 2)
      lin(f"head.edge_extractor.{m}.linear_k", C, C // 2)
      lin(f"head.edge_extractor.{m}.linear_v", C, C)
    lin("head.edge_extractor.edge_proj", C, C)
    bn("head.edge_extractor.bn", N * N)
    for layer in (1, 2):
      for m in "UVABE":
        lin(f"head.gnn.{m}{layer}", C, C, bias=False)
      bn(f"head.gnn.bnv{layer}", N)
      bn(f"head.gnn.bne{layer}", N * N)
    lin("head.edge_fc", C, 4)
  return t


def _official_checkpoint(tmp_path, stage, prefix="module.", extra=None):
  torch.manual_seed(0)
  tv = torchvision.models.resnet18()
  with torch.no_grad():
    for m in tv.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.75, 1.25)
  tv.eval()
  tensors = {f"backbone.{k}": v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
  head = _head_tensors(stage, np.random.default_rng(stage))
  tensors.update({k: torch.from_numpy(np.asarray(v)) for k, v in head.items()})
  tensors.update(extra or {})
  path = os.path.join(tmp_path, f"stage{stage}.pth")
  torch.save({"epoch": 1, "state_dict": {prefix + k: v for k, v in tensors.items()}}, path)
  return path, tv, head


def _reference(tv, head, stage, images):
  """torchvision backbone -> our head loaded with the same tensors (head verified against golden files)."""
  with torch.no_grad():
    f = torch.nn.Sequential(*list(tv.children())[:-2])(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  x = f.flatten(2).transpose(1, 2).numpy()  # [B, D, C_IN] in the official token order
  model = build(ModelSpec("resnet18", N, stage))
  load_head(StateDict(head), model, stage)
  model.eval()
  return nnx.jit(lambda m, x: m.head(m.global_linear(x)))(model, jnp.asarray(x))


@pytest.mark.parametrize("stage,prefix", [(1, "module."), (2, "")])
def test_from_official_matches_torchvision_backbone_plus_head(tmp_path, stage, prefix):
  path, tv, head = _official_checkpoint(tmp_path, stage, prefix)
  model, _ = loader.load(path, backbone="resnet18", num_aus=N, stage=stage, img_size=64)
  images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("f4")
  ours = forward(model, jnp.asarray(images))
  ref = _reference(tv, head, stage, images)
  assert ours["au_probs"].shape == (2, N)
  np.testing.assert_allclose(np.asarray(ours["au_probs"]), np.asarray(ref["au_probs"]), atol=1e-4)
  if stage == 2:
    assert ours["edge_logits"].shape == (2, N * N, 4)
    e, r = np.asarray(ours["edge_logits"]), np.asarray(ref["edge_logits"])
    assert np.abs(e - r).max() <= 1e-4 * np.abs(r).max()


def test_wrong_stage_num_aus_backbone_are_named(tmp_path):
  path, _, _ = _official_checkpoint(tmp_path, 2)
  with pytest.raises(ValueError, match="stage-2 checkpoint but stage=1"):
    loader.load(path, backbone="resnet18", num_aus=N, stage=1)
  with pytest.raises(ValueError, match=f"holds {N} AUs but num_aus=5"):
    loader.load(path, backbone="resnet18", num_aus=5, stage=2)
  with pytest.raises(ValueError, match="backbone is a resnet"):
    loader.load(path, backbone="swin_transformer_tiny", num_aus=N, stage=2)
  with pytest.raises(ValueError, match="backbone.layer1.0.conv1.weight"):
    loader.load(path, backbone="resnet50", num_aus=N, stage=2)


def test_unexpected_key_is_named(tmp_path):
  path, _, _ = _official_checkpoint(tmp_path, 1, extra={"head.extra_thing": torch.zeros(3)})
  with pytest.raises(KeyError, match="head.extra_thing"):
    loader.load(path, backbone="resnet18", num_aus=N, stage=1)


class _Evil:
  def __reduce__(self):
    return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path):
  path = os.path.join(tmp_path, "evil.pth")
  with open(path, "wb") as f:
    pickle.dump({"state_dict": {"x": _Evil()}}, f)
  with pytest.raises(CheckpointError, match="evil.pth: not a plain tensor checkpoint .*, so it will not be loaded"):
    loader.load(path, backbone="resnet18", num_aus=N, stage=1)


def test_cli_writes_a_checkpoint_that_loads(tmp_path):
  path, _, _ = _official_checkpoint(tmp_path, 2)
  out = os.path.join(tmp_path, "ckpt")
  convert.main(
    [path, out, "--backbone", "resnet18", "--img-size", "64", "--au-names", ",".join(f"AU{i}" for i in (1, 2, 4, 6))]
  )
  model, spec = loader.load(out)
  ref, _ = loader.load(path, backbone="resnet18", num_aus=N, stage=2, img_size=64)
  images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype("f4"))
  np.testing.assert_array_equal(
    np.asarray(forward(model, images)["au_probs"]), np.asarray(forward(ref, images)["au_probs"])
  )
  with pytest.raises(FileNotFoundError, match="model.json"):
    loader.load(tmp_path)
