"""Losses of ME-GraphAU: weighted asymmetric loss (Eq. 6), edge co-occurrence loss (Eq. 7), L (Eq. 8)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def weighted_asymmetric_loss(probs: jax.Array, labels: jax.Array, weights: jax.Array | None = None, *,
                             eps: float = 1e-8, mask: jax.Array | None = None) -> jax.Array:
  """L_WA (Eq. 6) with the official semantics.

  -mean_b mean_i w_i [y log(max(p, eps)) + (1-y) p log(max(1-p, eps))], where the focusing weight
  p on the negative term is held out of the gradient. ``probs``/``labels``: ``[B, N]``;
  ``weights``: ``[N]``; ``mask``: optional ``[B]`` (1 = real example) for padded batches.
  """
  p = probs.astype(jnp.float32)
  y = labels.astype(jnp.float32)
  los_pos = y * jnp.log(jnp.maximum(p, eps))
  los_neg = (1.0 - y) * jnp.log(jnp.maximum(1.0 - p, eps))
  focus = jax.lax.stop_gradient(p)  # 1 - (1 - p), no gradient
  loss = los_pos + focus * los_neg  # [B, N]
  if weights is not None:
    loss = loss * jnp.asarray(weights, jnp.float32)[None, :]
  per_example = jnp.mean(loss, axis=-1)  # [B]
  if mask is None:
    return -jnp.mean(per_example)
  mask = mask.astype(jnp.float32)
  return -jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def weighted_bce_loss(probs: jax.Array, labels: jax.Array, weights: jax.Array | None = None, *,
                      eps: float = 1e-8, mask: jax.Array | None = None) -> jax.Array:
  """Weighted binary cross-entropy (the loss of the first two rows of the paper's Table 3)."""
  p = probs.astype(jnp.float32)
  y = labels.astype(jnp.float32)
  loss = y * jnp.log(jnp.maximum(p, eps)) + (1.0 - y) * jnp.log(jnp.maximum(1.0 - p, eps))
  if weights is not None:
    loss = loss * jnp.asarray(weights, jnp.float32)[None, :]
  per_example = jnp.mean(loss, axis=-1)
  if mask is None:
    return -jnp.mean(per_example)
  mask = mask.astype(jnp.float32)
  return -jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def relation_labels(labels: jax.Array) -> jax.Array:
  """4-class co-occurrence label of every ordered AU pair: ``[B, N]`` -> ``[B, N*N]``, 2*y_i + y_j at i*N + j."""
  y = labels.astype(jnp.int32)
  b, n = y.shape
  return (2 * y[:, :, None] + y[:, None, :]).reshape(b, n * n)


def edge_loss(edge_logits: jax.Array, relations: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
  """L_E (Eq. 7): softmax cross-entropy over the 4 classes, mean over all pairs and examples."""
  ce = optax.softmax_cross_entropy_with_integer_labels(edge_logits.astype(jnp.float32),
                                                       relations.astype(jnp.int32))  # [B, N*N]
  if mask is None:
    return jnp.mean(ce)
  mask = mask.astype(jnp.float32)
  return jnp.sum(jnp.mean(ce, axis=-1) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def total_loss(wa: jax.Array, edge: jax.Array | None, lam: float) -> jax.Array:
  """L = L_WA + lambda * L_E (Eq. 8); stage 1 has no edge term."""
  return wa if edge is None else wa + lam * edge


def class_weights(labels: np.ndarray) -> np.ndarray:
  """Per-AU weights from training labels as the official tool: w = 1/rate, normalised to sum to N.

  ``rate`` is the fraction of rows with label > 0. (The paper's text says the weights sum to 1;
  the official code, which produced its results, normalises to N.)
  """
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.shape[0] == 0:
    raise ValueError(f"labels must be a non-empty [M, N] array, got shape {labels.shape}")
  rate = np.mean(labels > 0, axis=0)
  if np.any(rate == 0):
    raise ValueError(f"AU column(s) {np.flatnonzero(rate == 0).tolist()} have no positive training "
                     "label; their class weight would be infinite")
  w = 1.0 / rate
  return (w / w.sum() * w.shape[0]).astype(np.float32)
