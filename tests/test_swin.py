"""Swin backbone: parity with timm's independent Swin, weight-loading errors, DropPath, bf16, sizes."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from megraph_jax.models import swin as swin_lib
from megraph_jax.models.layers import DropPath
from megraph_jax.models.swin import SwinTransformer
from megraph_jax.weights.common import StateDict
from megraph_jax.weights.swin import load_swin, load_swin_imagenet

pytestmark = pytest.mark.precision("highest")  # parity with the official model / references to ~1e-7

torch = pytest.importorskip("torch")
timm_swin = pytest.importorskip("timm.models.swin_transformer")

SMALL = dict(patch_size=4, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


def _randomised_timm(img_size: int, window_size: int, seed: int = 0):
  """A small timm Swin in eval mode with every parameter randomised (bias tables with a large std)."""
  torch.manual_seed(seed)
  model = timm_swin.SwinTransformer(img_size=img_size, window_size=window_size, num_classes=0, **SMALL)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("relative_position_bias_table"):
        p.normal_(0.0, 1.0)
      elif p.ndim == 1 and re.search(r"norm\d?\.weight$", name):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif p.ndim == 1:
        p.normal_(0.0, 0.1)
      else:
        p.normal_(0.0, 1.0 / np.sqrt(p[0].numel()))
  return model.eval()


def _official_layout(model) -> dict[str, np.ndarray]:
  """timm state_dict -> the Microsoft/ME-GraphAU layout, with the buffers the official release saves."""
  out = {}
  tensors = dict(model.state_dict())
  tensors.update(dict(model.named_buffers()))  # relative_position_index / attn_mask (non-persistent in timm)
  for key, value in tensors.items():
    if value is None:
      continue
    # timm runs PatchMerging at the start of stages 1..3; the official layout at the end of stages 0..2.
    key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)
    out[key] = value.detach().cpu().numpy()
  return out


def _ours(img_size: int, window_size: int, **kw) -> SwinTransformer:
  """Our SMALL-config model with zero parameters (skips the slow CPU init; tests load weights)."""
  model = nnx.eval_shape(
    lambda: SwinTransformer(img_size=img_size, window_size=window_size, rngs=nnx.Rngs(0), **SMALL, **kw)
  )
  nnx.update(model, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), nnx.state(model)))
  return model


def _image(img_size: int, batch: int = 2, seed: int = 1) -> np.ndarray:
  """A random NHWC batch."""
  return np.random.default_rng(seed).standard_normal((batch, img_size, img_size, 3)).astype(np.float32)


def _timm_tokens(model, x_nhwc: np.ndarray) -> np.ndarray:
  """timm's forward_features (NHWC [B, h, w, C]) flattened to [B, h*w, C]."""
  with torch.no_grad():
    y = model.forward_features(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)).numpy()
  assert y.ndim == 4, y.shape
  return y.reshape(y.shape[0], -1, y.shape[-1])


@pytest.fixture(scope="module")
def timm224():
  """Randomised timm Swin at 224 px, its official-layout weights, and a forward pass."""
  model = _randomised_timm(224, 7)
  x = _image(224)
  return model, _official_layout(model), x, _timm_tokens(model, x)


@pytest.fixture(scope="module")
def ours224(timm224):
  """Our model loaded from the timm-derived official-layout weights."""
  _, sd, _, _ = timm224
  model = _ours(224, 7)
  state = StateDict(sd, "timm224")
  load_swin(state, "", model)
  state.check_all_used()
  model.eval()
  return model


def test_layout_has_shifted_blocks_and_buffers(timm224, ours224):
  _, sd, _, _ = timm224
  # Stages 0-2 (56, 28, 14 > 7) shift their odd blocks; stage 3 (7x7) is one window, unshifted.
  assert [b.shift_size for layer in ours224.layers for b in layer.blocks] == [0, 3, 0, 3, 0, 3, 0, 0]
  assert "layers.0.blocks.1.attn_mask" in sd and "layers.0.downsample.reduction.weight" in sd
  assert "layers.3.downsample.norm.weight" not in sd
  np.testing.assert_array_equal(sd["layers.0.blocks.1.attn_mask"], swin_lib.shifted_window_mask(56, 56, 7, 3))


def test_parity_with_timm_224(timm224, ours224):
  _, _, x, want = timm224
  got = np.asarray(nnx.jit(lambda m, v: m(v))(ours224, jnp.asarray(x)))
  assert got.shape == want.shape == (2, 49, ours224.num_features)
  diff = np.abs(got - want).max()
  print(f"swin fp32 224px max|diff| = {diff:.2e}")
  assert diff <= 1e-4, diff


def test_parity_with_timm_non224_window_clamps():
  # 96 px, window 6: maps 24, 12, 6, 3 -> stage 2 is exactly one window, stage 3 clamps the window to 3.
  tmodel = _randomised_timm(96, 6, seed=3)
  model = _ours(96, 6)
  state = StateDict(_official_layout(tmodel), "timm96")
  load_swin(state, "", model)
  state.check_all_used()
  assert [layer.blocks[0].window_size for layer in model.layers] == [6, 6, 6, 3]
  assert [layer.blocks[1].shift_size for layer in model.layers] == [3, 3, 0, 0]
  x = _image(96, seed=4)
  model.eval()
  got = np.asarray(nnx.jit(lambda m, v: m(v))(model, jnp.asarray(x)))
  want = _timm_tokens(tmodel, x)
  assert got.shape == want.shape == (2, 9, 256)
  diff = np.abs(got - want).max()
  print(f"swin fp32 96px max|diff| = {diff:.2e}")
  assert diff <= 1e-4, diff


def test_bf16_compute_close_to_fp32(timm224, ours224):
  _, sd, x, _ = timm224
  model = _ours(224, 7, dtype=jnp.bfloat16)
  load_swin(StateDict(sd, "timm224"), "", model)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
  model.eval()
  got = nnx.jit(lambda m, v: m(v))(model, jnp.asarray(x))
  assert got.dtype == jnp.bfloat16
  ref = np.asarray(nnx.jit(lambda m, v: m(v))(ours224, jnp.asarray(x)))
  err = np.abs(np.asarray(got, np.float32) - ref)
  print(f"swin bf16 vs fp32: max {err.max():.3f} mean {err.mean():.4f}")
  # Loose: bf16 keeps ~3 significant digits through 8 blocks; outputs are LayerNorm-scaled (~1).
  assert np.isfinite(err).all() and err.mean() < 0.03 and err.max() < 0.3


def test_incompatible_sizes_raise():
  with pytest.raises(ValueError, match="not divisible by the window"):
    _ours(192, 7)  # 48 px map is neither a multiple of 7 nor at most 7.
  with pytest.raises(ValueError, match=r"not a multiple of 32.*e\.g\. 128 works"):
    _ours(112, 7)  # 28, 14, 7 -> merging a 7x7 map: refused when built, naming a size that works.


def test_missing_and_misshaped_keys_are_named(timm224):
  _, sd, _, _ = timm224
  broken = dict(sd)
  del broken["layers.1.blocks.0.attn.qkv.weight"]
  with pytest.raises(KeyError, match=re.escape("layers.1.blocks.0.attn.qkv.weight")):
    load_swin(StateDict(broken, "ckpt"), "", _ours(224, 7))
  broken = dict(sd)
  broken["layers.2.downsample.reduction.weight"] = np.zeros((3, 3), np.float32)
  with pytest.raises(ValueError, match=re.escape("layers.2.downsample.reduction.weight")):
    load_swin(StateDict(broken, "ckpt"), "", _ours(224, 7))
  broken = dict(sd)
  broken["layers.0.blocks.0.attn.relative_position_index"] = np.zeros((49, 49), np.int64)
  with pytest.raises(ValueError, match=re.escape("layers.0.blocks.0.attn.relative_position_index")):
    load_swin(StateDict(broken, "ckpt"), "", _ours(224, 7))
  # Prefixed (inside a bigger checkpoint), with a block this model lacks.
  prefixed = {"backbone." + k: v for k, v in sd.items()}
  prefixed["backbone.layers.3.blocks.2.norm1.weight"] = np.ones((256,), np.float32)
  with pytest.raises(KeyError, match=re.escape("backbone.layers.3.blocks.2.norm1.weight")):
    load_swin(StateDict(prefixed, "ckpt"), "backbone", _ours(224, 7))


def test_timm_layout_is_refused_with_a_hint(timm224):
  model, _, _, _ = timm224
  with pytest.raises(KeyError, match="timm"):
    load_swin(StateDict({k: v.numpy() for k, v in model.state_dict().items()}, "timm"), "", _ours(224, 7))


def test_load_swin_imagenet_round_trip(tmp_path, timm224, ours224):
  _, sd, x, _ = timm224
  ckpt = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
  ckpt["head.weight"] = torch.zeros(1000, 256)
  ckpt["head.bias"] = torch.zeros(1000)
  path = tmp_path / "swin_small_test.pth"
  torch.save({"model": ckpt, "epoch": 300}, path)
  model = _ours(224, 7)
  load_swin_imagenet(path, model)
  params = lambda m: jax.tree.leaves(nnx.state(m, nnx.Param))
  for a, b in zip(params(model), params(ours224)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ckpt["layers.0.blocks.0.attn.extra"] = torch.zeros(3)
  torch.save({"model": ckpt}, path)
  with pytest.raises(KeyError, match=re.escape("layers.0.blocks.0.attn.extra")):
    load_swin_imagenet(path, _ours(224, 7))


def test_drop_path_train_vs_eval():
  layer = DropPath(0.5, rngs=nnx.Rngs(dropout=0))
  x = jnp.ones((64, 3, 2))
  a, b = np.asarray(layer(x)), np.asarray(layer(x))
  assert not np.array_equal(a, b)
  assert set(np.unique(a).tolist()) == {0.0, 2.0}
  assert (a == a[:, :1, :1]).all()  # Whole samples are dropped.
  layer.eval()
  np.testing.assert_array_equal(np.asarray(layer(x)), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(DropPath(0.0)(x)), np.asarray(x))


def test_model_drop_path_toggles_with_train_eval():
  model = SwinTransformer(
    img_size=56, embed_dim=16, depths=(2, 2), num_heads=(1, 2), drop_path_rate=0.5, rngs=nnx.Rngs(params=0, dropout=1)
  )
  x = jnp.asarray(_image(56, batch=4))
  rates = [b.drop_path.rate for layer in model.layers for b in layer.blocks]
  np.testing.assert_allclose(rates, np.linspace(0.0, 0.5, 4))
  forward = nnx.jit(lambda m, v: m(v))
  model.train()
  a, b = np.asarray(forward(model, x)), np.asarray(forward(model, x))
  assert not np.allclose(a, b)  # The 'dropout' stream advances between calls.
  model.eval()
  assert all(b.drop_path.deterministic for layer in model.layers for b in layer.blocks)
  np.testing.assert_array_equal(np.asarray(forward(model, x)), np.asarray(forward(model, x)))


@pytest.mark.parametrize(
  "name,dim,heads,depth3,rate,params",
  [
    ("swin_transformer_tiny", 768, 24, 6, 0.2, 27_519_354),
    ("swin_transformer_small", 768, 24, 18, 0.3, 48_837_258),
    ("swin_transformer_base", 1024, 32, 18, 0.5, 86_743_224),
  ],
)
def test_factories(name, dim, heads, depth3, rate, params):
  factory = getattr(swin_lib, name)
  model = nnx.eval_shape(lambda: factory(rngs=nnx.Rngs(0)))
  assert model.num_features == dim and model.num_tokens == 49
  assert model.layers[3].blocks[0].attn.num_heads == heads and len(model.layers[2].blocks) == depth3
  assert model.layers[2].blocks[-1].drop_path.rate == pytest.approx(
    rate * (sum(model.depths) - 3) / (sum(model.depths) - 1)
  )
  n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n == params
  assert (
    swin_lib.swin(name, rngs=nnx.Rngs(0), img_size=56, depths=(2, 2), num_heads=(1, 2), embed_dim=8).num_features == 16
  )


def test_unknown_name_raises():
  with pytest.raises(ValueError, match="swin_transformer_huge"):
    swin_lib.swin("swin_transformer_huge", rngs=nnx.Rngs(0))
