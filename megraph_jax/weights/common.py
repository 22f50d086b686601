"""Shape-checked assignment of PyTorch tensors to NNX variables, with errors that name the key."""

from __future__ import annotations

from typing import Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx


class StateDict:
  """A PyTorch state_dict (as NumPy arrays) that records which keys were consumed."""

  def __init__(self, tensors: Mapping[str, np.ndarray], source: str = "<state_dict>"):
    self.tensors = dict(tensors)
    self.source = source
    self.used: set[str] = set()

  def take(self, key: str) -> np.ndarray:
    if key not in self.tensors:
      near = [k for k in self.tensors if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]][:5]
      raise KeyError(f"{self.source}: missing key '{key}'" + (f" (keys nearby: {near})" if near else ""))
    self.used.add(key)
    return self.tensors[key]

  def skip(self, keys: Iterable[str]) -> None:
    """Marks keys as consumed without using them (buffers we recompute, e.g. Swin's attn_mask)."""
    for k in keys:
      if k in self.tensors:
        self.used.add(k)

  def unused(self, prefix: str = "") -> list[str]:
    return sorted(k for k in self.tensors if k.startswith(prefix) and k not in self.used)

  def check_all_used(self, prefix: str = "") -> None:
    left = self.unused(prefix)
    if left:
      raise KeyError(
        f"{self.source}: {len(left)} unexpected key(s) not mapped to the model: {left[:20]}"
        + (" ..." if len(left) > 20 else "")
      )


def assign(var: nnx.Variable, value: np.ndarray, key: str, source: str = "") -> None:
  """Writes ``value`` into ``var`` after checking the shape; the error names the key."""
  current = var.get_value()  # an array, or a ShapeDtypeStruct in an abstract (nnx.eval_shape) model
  want = tuple(current.shape)
  if tuple(value.shape) != want:
    raise ValueError(f"{source}: key '{key}' has shape {tuple(value.shape)}, the model expects {want}")
  var.set_value(jnp.asarray(value, dtype=current.dtype))


def load_linear(sd: StateDict, prefix: str, linear: nnx.Linear) -> None:
  """torch ``nn.Linear`` (weight [out, in]) -> ``nnx.Linear`` (kernel [in, out])."""
  w = sd.take(prefix + ".weight")
  assign(linear.kernel, np.ascontiguousarray(w.T), prefix + ".weight", sd.source)
  if getattr(linear, "bias", None) is not None:
    assign(linear.bias, sd.take(prefix + ".bias"), prefix + ".bias", sd.source)


def load_conv(sd: StateDict, prefix: str, conv: nnx.Conv) -> None:
  """torch ``nn.Conv2d`` (weight [O, I, kh, kw]) -> ``nnx.Conv`` (kernel [kh, kw, I, O])."""
  w = sd.take(prefix + ".weight")
  assign(conv.kernel, np.ascontiguousarray(w.transpose(2, 3, 1, 0)), prefix + ".weight", sd.source)
  if getattr(conv, "bias", None) is not None:
    assign(conv.bias, sd.take(prefix + ".bias"), prefix + ".bias", sd.source)


def load_batchnorm(sd: StateDict, prefix: str, bn) -> None:
  """torch ``BatchNorm{1,2}d`` -> our ``BatchNorm``; ``num_batches_tracked`` is consumed and ignored."""
  assign(bn.scale, sd.take(prefix + ".weight"), prefix + ".weight", sd.source)
  assign(bn.bias, sd.take(prefix + ".bias"), prefix + ".bias", sd.source)
  assign(bn.mean, sd.take(prefix + ".running_mean"), prefix + ".running_mean", sd.source)
  assign(bn.var, sd.take(prefix + ".running_var"), prefix + ".running_var", sd.source)
  sd.skip([prefix + ".num_batches_tracked"])


def load_layernorm(sd: StateDict, prefix: str, ln: nnx.LayerNorm) -> None:
  """torch ``nn.LayerNorm`` -> ``nnx.LayerNorm``."""
  assign(ln.scale, sd.take(prefix + ".weight"), prefix + ".weight", sd.source)
  assign(ln.bias, sd.take(prefix + ".bias"), prefix + ".bias", sd.source)
