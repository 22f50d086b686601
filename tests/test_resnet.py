"""Parity of our NNX ResNet with torchvision's, and the torchvision / official state_dict loader."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import forward

from megraph_jax.models.resnet import ResNet, resnet
from megraph_jax.weights.common import StateDict
from megraph_jax.weights.resnet import load_resnet, load_torchvision_imagenet

pytestmark = pytest.mark.precision("highest")  # parity with the official model / references to ~1e-7

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

_TOL = 1e-4  # fp32 max abs diff; outputs are O(1) (max |y| ~ 2).


def _torchvision(name: str, seed: int = 0):
  """torchvision ResNet with random weights and non-trivial BatchNorm affine params and running stats."""
  torch.manual_seed(seed)
  tv = getattr(torchvision.models, name)(weights=None)
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in tv.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
        m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
        m.bias.copy_(0.1 * torch.randn(c, generator=g))
  return tv.eval()


def _torch_tokens(tv, x):
  """torchvision's layer4 map [B, C, h, w] -> [B, h*w, C]."""
  f = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
  return f.flatten(2).transpose(1, 2).detach().numpy()


def _state_dict(tv, prefix: str = "") -> dict[str, np.ndarray]:
  return {prefix + k: v.detach().numpy().copy() for k, v in tv.state_dict().items()}


def _ours(name: str, tv, **kw) -> ResNet:
  model = resnet(name, rngs=nnx.Rngs(0), **kw)
  sd = StateDict(_state_dict(tv, "backbone."), source="test")
  load_resnet(sd, "backbone.", model)
  assert sd.unused() == ["backbone.fc.bias", "backbone.fc.weight"]
  return model


def _inputs(seed: int = 0):
  x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
  return x, jnp.asarray(x.permute(0, 2, 3, 1).numpy())


@pytest.fixture(scope="module")
def tv18():
  return _torchvision("resnet18")


@pytest.mark.parametrize("name,channels", [("resnet18", 512), ("resnet50", 2048)])
def test_eval_parity(name, channels, tv18):
  tv = tv18 if name == "resnet18" else _torchvision(name)
  model = _ours(name, tv)
  model.eval()
  assert model.num_features == channels
  x_t, x_j = _inputs()
  with torch.no_grad():
    ref = _torch_tokens(tv, x_t)
  y = np.asarray(forward(model, x_j))
  assert y.shape == ref.shape == (2, 4, channels)
  diff = float(np.abs(y - ref).max())
  assert diff <= _TOL, f"{name}: max abs diff {diff:.3g} (max |ref| {np.abs(ref).max():.3g})"


def test_shapes_at_224_and_names():
  model = nnx.eval_shape(lambda: resnet("resnet50", rngs=nnx.Rngs(0)))
  assert model.num_features == 2048
  assert tuple(model.layer1[0].conv1.kernel.shape) == (1, 1, 64, 64)
  assert tuple(model.layer2[0].downsample[0].kernel.shape) == (1, 1, 256, 512)
  assert tuple(model.layer2[0].conv2.strides) == (2, 2)  # v1.5: stride on the 3x3 conv.
  with pytest.raises(ValueError, match="resnet18"):
    resnet("resnet152", rngs=nnx.Rngs(0))
  small = resnet("resnet18", rngs=nnx.Rngs(0))
  small.eval()
  out = jax.eval_shape(small, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert out.shape == (1, 49, 512)


def test_misshaped_key_names_it(tv18):
  sd = _state_dict(tv18)
  sd["layer2.1.conv2.weight"] = sd["layer2.1.conv2.weight"][:, :64]
  with pytest.raises(ValueError, match=r"layer2\.1\.conv2\.weight"):
    load_resnet(StateDict(sd), "", resnet("resnet18", rngs=nnx.Rngs(0)))


def test_missing_key_names_it(tv18):
  sd = _state_dict(tv18)
  del sd["layer3.0.downsample.1.running_var"]
  with pytest.raises(KeyError, match=r"layer3\.0\.downsample\.1\.running_var"):
    load_resnet(StateDict(sd), "", resnet("resnet18", rngs=nnx.Rngs(0)))


def test_torchvision_pth_roundtrip(tv18, tmp_path):
  path = tmp_path / "resnet18.pth"
  torch.save(tv18.state_dict(), path)
  model = resnet("resnet18", rngs=nnx.Rngs(1))
  load_torchvision_imagenet(path, model)
  model.eval()
  x_t, x_j = _inputs(1)
  with torch.no_grad():
    ref = _torch_tokens(tv18, x_t)
  diff = float(np.abs(np.asarray(forward(model, x_j)) - ref).max())
  assert diff <= _TOL, f"max abs diff {diff:.3g}"
  # Any key other than fc.* that the model does not use is an error naming it.
  extra = dict(tv18.state_dict())
  extra["layer5.0.conv1.weight"] = torch.zeros(1)
  torch.save(extra, tmp_path / "extra.pth")
  with pytest.raises(KeyError, match=r"layer5\.0\.conv1\.weight"):
    load_torchvision_imagenet(tmp_path / "extra.pth", model)


def test_bf16_compute_close_to_fp32(tv18):
  ref_model = _ours("resnet18", tv18)
  model = _ours("resnet18", tv18, dtype=jnp.bfloat16)
  ref_model.eval()
  model.eval()
  assert model.conv1.kernel.dtype == jnp.float32  # params stay float32
  _, x = _inputs(2)
  y = forward(model, x)
  assert y.dtype == jnp.bfloat16
  ref = np.asarray(forward(ref_model, x))
  diff = float(np.abs(np.asarray(y, np.float32) - ref).max())
  # bf16 has ~3 significant digits; 17 layers compound it. Loose: 5% of the output range.
  assert diff <= 0.05 * np.abs(ref).max(), f"bf16 vs fp32 max abs diff {diff:.3g} (max |ref| {np.abs(ref).max():.3g})"


def _resolve(model, torch_name: str):
  """Our module at a torch module path, e.g. 'layer1.0.downsample.1'."""
  m = model
  for part in torch_name.split("."):
    m = m[int(part)] if part.isdigit() else getattr(m, part)
  return m


def test_train_mode_batch_stats():
  tv = _torchvision("resnet18", seed=3)
  model = _ours("resnet18", tv)
  tv.train()
  model.train()
  x_t, x_j = _inputs(3)
  with torch.no_grad():
    ref = _torch_tokens(tv, x_t)
  y = np.asarray(forward(model, x_j))
  diff = float(np.abs(y - ref).max())
  assert diff <= _TOL, f"train-mode output max abs diff {diff:.3g}"
  stat_diff = 0.0
  n = 0
  for name, m in tv.named_modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      bn = _resolve(model, name)
      stat_diff = max(
        stat_diff,
        float(np.abs(np.asarray(bn.mean[...]) - m.running_mean.numpy()).max()),
        float(np.abs(np.asarray(bn.var[...]) - m.running_var.numpy()).max()),
      )
      n += 1
  assert n == 20
  assert stat_diff <= _TOL, f"running stats max abs diff {stat_diff:.3g}"


def test_loads_into_an_abstract_model(tv18):
  """Weights load into an ``nnx.eval_shape`` model (no random init) and give torchvision's outputs."""
  model = nnx.eval_shape(lambda: resnet("resnet18", rngs=nnx.Rngs(0)))
  sd = StateDict(_state_dict(tv18), source="test")
  load_resnet(sd, "", model)
  abstract = [p for p, v in nnx.to_flat_state(nnx.state(model)) if isinstance(v[...], jax.ShapeDtypeStruct)]
  assert not abstract, abstract
  model.eval()
  x_t, x_j = _inputs(1)
  with torch.no_grad():
    ref = _torch_tokens(tv18, x_t)
  assert float(np.abs(np.asarray(forward(model, x_j)) - ref).max()) <= _TOL
