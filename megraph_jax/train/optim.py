"""AdamW with PyTorch semantics, the official per-step cosine schedule, and per-parameter masks from regexes."""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from megraph_jax.errors import ConfigError
from megraph_jax.train import step_cache

TRAIN, FROZEN = "train", "frozen"


def cosine_lr(init_lr: float, total_steps: int, dtype: Any = jnp.float32) -> Callable[[jax.Array], jax.Array]:
  """Official ``adjust_learning_rate``: ``init * (1 + cos(pi * t / T)) / 2`` at global iteration t (no warmup).

  The lr is computed in ``dtype``: float32 by default, float64 for float64 models (``create_optimizer`` passes
  the parameters' dtype), so a float64 run follows the official float64 (Python float) lr exactly.
  """
  if total_steps <= 0:
    raise ValueError(f"cosine_lr: total_steps must be positive, got {total_steps}")

  def schedule(step):
    t = jnp.minimum(jnp.asarray(step, dtype), float(total_steps))
    return init_lr * jnp.cos(0.5 * math.pi * t / total_steps) ** 2  # == (1 + cos(pi t / T)) / 2, no cancellation

  return schedule


def schedule_dtype(params: Any) -> Any:
  """float64 if any floating parameter is float64 (a float64 numerics run), else float32."""
  dtypes = [jnp.dtype(leaf.dtype) for leaf in jax.tree.leaves(params) if hasattr(leaf, "dtype")]
  return jnp.float64 if any(d == jnp.float64 for d in dtypes) else jnp.float32


def path_str(path: tuple[Any, ...]) -> str:
  """'/'-joined parameter path of a pytree key path (``backbone/layer1/0/conv1/kernel``)."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      if k.name != "value":  # the leaf inside an nnx.Variable
        parts.append(k.name)
    else:
      parts.append(str(k))
  return "/".join(parts)


def _compile(regex: str, key: str) -> re.Pattern:
  try:
    return re.compile(regex)
  except re.error as e:
    raise ConfigError(f"config key '{key}': {regex!r} is not a valid regular expression ({e})") from e


def path_mask(params: Any, regex: str, *, key: str = "regex") -> Any:
  """Pytree of bools like ``params``: True where the '/'-joined path fully matches ``regex``."""
  pattern = _compile(regex, key)
  return jax.tree_util.tree_map_with_path(lambda p, _: pattern.fullmatch(path_str(p)) is not None, params)


def param_labels(params: Any, trainable_regex: str, *, key: str = "trainable_params") -> Any:
  """'train' / 'frozen' per parameter leaf; raises if the regex selects nothing."""
  mask = path_mask(params, trainable_regex, key=key)
  if not any(jax.tree.leaves(mask)):
    raise ConfigError(
      f"config key '{key}': {trainable_regex!r} matches no parameter; paths look like "
      f"{path_str(jax.tree_util.tree_flatten_with_path(params)[0][0][0])!r}"
    )
  return jax.tree.map(lambda m: TRAIN if m else FROZEN, mask)


def adamw(
  learning_rate: Callable | float,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 5e-4,
  decay_mask: Any = None,
  clip_norm: float = 0.0,
) -> optax.GradientTransformation:
  """``torch.optim.AdamW``: p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p); optional global-norm clipping."""
  parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm and clip_norm > 0 else []
  parts += [
    optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
    optax.add_decayed_weights(weight_decay, mask=decay_mask),
    optax.scale_by_learning_rate(learning_rate),
  ]
  return optax.chain(*parts)


def sam_perturbation(params: Any, grads: Any, *, rho: float, adaptive: bool = True) -> Any:
  """SAM's ascent e(w) = rho T(w)^2 g / ||T(w) g||_2, T(w) = |w| (ASAM, ``adaptive``) or 1, the norm over all
  parameters together (Foret et al. 2021; Kwon et al. 2021 for ASAM; as OpenGraphAU's ``sam.py``)."""
  scaled = jax.tree.map(lambda w, g: (jnp.abs(w) if adaptive else 1.0) * g, params, grads)
  scale = rho / (optax.tree.norm(scaled) + 1e-12)
  return jax.tree.map(lambda w, g: (w * w if adaptive else 1.0) * g * scale.astype(g.dtype), params, grads)


def create_optimizer(
  params: Any,
  *,
  learning_rate: float,
  total_steps: int,
  weight_decay: float,
  b1: float,
  b2: float,
  eps: float,
  clip_norm: float = 0.0,
  trainable_params: str = ".*",
  decay_params: str = ".*",
  stage_key: str = "stage1",
) -> tuple[optax.GradientTransformation, Callable]:
  """AdamW + cosine schedule on the parameters matching ``trainable_params``; the others get zero updates.

  ``decay_params`` selects the trained parameters that get weight decay. Defaults are official: all
  parameters train and all are decayed. The schedule computes in the parameters' dtype (float64 for float64
  models). Returns the transformation and the schedule.
  """
  params = nnx.as_pure(params)  # masks over plain arrays, as nnx.Optimizer.update hands them to optax
  dtype = schedule_dtype(params)

  def build():
    schedule = cosine_lr(learning_rate, total_steps, dtype=dtype)
    labels = param_labels(params, trainable_params, key=f"{stage_key}.trainable_params")
    decay_mask = path_mask(params, decay_params, key=f"{stage_key}.decay_params")
    inner = adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, decay_mask=decay_mask,
                  clip_norm=clip_norm)  # fmt: skip
    return optax.multi_transform({TRAIN: inner, FROZEN: optax.set_to_zero()}, labels), schedule

  # The same objects for the same settings and parameter tree: a train state's graph holds the transformation, and
  # equal graphs let a later run in this process reuse its jitted steps (step_cache).
  key = (learning_rate, total_steps, weight_decay, b1, b2, eps, clip_norm, trainable_params, decay_params, stage_key,
         jax.tree.structure(params), jnp.dtype(dtype).name)  # fmt: skip
  return _OPTIMIZERS.get(key, build)


_OPTIMIZERS = step_cache.KeyedCache()
