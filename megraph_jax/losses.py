"""Losses of ME-GraphAU: weighted asymmetric loss (Eq. 6), edge co-occurrence loss (Eq. 7), L (Eq. 8).

Labels are 0/1, or ``task.UNLABELLED`` (9, BP4D's "not coded"): such entries add nothing to L_WA, and the
AU pairs they take part in (relation label -1, ``task.relation_labels``) add nothing to L_E. With only 0/1
labels everything is the official loss. The stage loss built from these is ``task.loss_terms``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from megraph_jax.numerics import acc_dtype


def _entry_losses(
  probs: jax.Array, labels: jax.Array, weights: jax.Array | None, *, eps: float, focus: bool
) -> tuple[jax.Array, jax.Array]:
  """Per-entry log-likelihood terms ``[B, N]`` (0 where the label is not 0/1) and the 0/1 mask of labelled entries.

  y log(max(p, eps)) + [p] (1-y) log(max(1-p, eps)), times w_i; with ``focus`` the negative term is weighted by p
  held out of the gradient (Eq. 6's asymmetric focusing), without it this is binary cross-entropy.
  """
  f = acc_dtype(probs.dtype)  # float32 (float64 for float64 models)
  p = probs.astype(f)
  known = ((labels >= 0) & (labels <= 1)).astype(f)  # [B, N]; 0 for UNLABELLED (9) and not annotated (-1)
  y = jnp.where(known > 0, labels, 0).astype(f)
  neg = (1.0 - y) * jnp.log(jnp.maximum(1.0 - p, eps))
  if focus:
    neg = jax.lax.stop_gradient(p) * neg  # 1 - (1 - p), no gradient
  loss = (y * jnp.log(jnp.maximum(p, eps)) + neg) * known  # [B, N]
  if weights is not None:
    loss = loss * jnp.asarray(weights, f)[None, :]
  return loss, known


def _mean_over_aus_then_examples(loss: jax.Array, mask: jax.Array | None) -> jax.Array:
  """-mean_b mean_i loss (ME-GraphAU's reduction); ``mask`` ``[B]`` leaves padded examples out."""
  per_example = jnp.mean(loss, axis=-1)  # [B]
  if mask is None:
    return -jnp.mean(per_example)
  mask = mask.astype(loss.dtype)
  return -jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def weighted_asymmetric_loss(
  probs: jax.Array,
  labels: jax.Array,
  weights: jax.Array | None = None,
  *,
  eps: float = 1e-8,
  mask: jax.Array | None = None,
) -> jax.Array:
  """L_WA (Eq. 6) with the official semantics.

  -mean_b mean_i w_i [y log(max(p, eps)) + (1-y) p log(max(1-p, eps))], where the focusing weight
  p on the negative term is held out of the gradient. ``probs``/``labels``: ``[B, N]``;
  ``weights``: ``[N]``; ``mask``: optional ``[B]`` (1 = real example) for padded batches.
  """
  loss, _ = _entry_losses(probs, labels, weights, eps=eps, focus=True)
  return _mean_over_aus_then_examples(loss, mask)


def opengraphau_wa_loss(
  probs: jax.Array,
  labels: jax.Array,
  weights: jax.Array | None = None,
  *,
  eps: float = 1e-8,
  mask: jax.Array | None = None,
) -> jax.Array:
  """L_WA as OpenGraphAU's training (its ``WeightedAsymmetricLoss``): label -1 = "not annotated".

  The per-entry terms of :func:`weighted_asymmetric_loss`, averaged over the annotated (0/1) entries of the whole
  batch: -sum_{b,i annotated} w_i [...] / #annotated (ME-GraphAU averages over all N AUs, then over examples).
  Entries that are not 0/1 (-1, BP4D's 9) add nothing. ``probs``/``labels``: ``[B, N]``; ``weights``: ``[N]``;
  ``mask``: optional ``[B]`` (1 = real example) for padded batches.
  """
  loss, known = _entry_losses(probs, labels, weights, eps=eps, focus=True)
  if mask is not None:
    known = known * mask.astype(known.dtype)[:, None]
  return -jnp.sum(loss * known) / jnp.maximum(jnp.sum(known), 1.0)


def weighted_bce_loss(
  probs: jax.Array,
  labels: jax.Array,
  weights: jax.Array | None = None,
  *,
  eps: float = 1e-8,
  mask: jax.Array | None = None,
) -> jax.Array:
  """Weighted binary cross-entropy (the loss of the first two rows of the paper's Table 3)."""
  loss, _ = _entry_losses(probs, labels, weights, eps=eps, focus=False)
  return _mean_over_aus_then_examples(loss, mask)


def edge_loss(edge_logits: jax.Array, relations: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
  """L_E (Eq. 7): softmax cross-entropy over the 4 classes, mean over all pairs and examples."""
  f = acc_dtype(edge_logits.dtype)
  rel = relations.astype(jnp.int32)
  known = (rel >= 0).astype(f)  # [B, N*N]; pairs with an unlabelled AU are -1
  ce = optax.softmax_cross_entropy_with_integer_labels(edge_logits.astype(f), jnp.maximum(rel, 0)) * known
  if mask is not None:
    known = known * mask.astype(f)[:, None]
    ce = ce * mask.astype(f)[:, None]
  return jnp.sum(ce) / jnp.maximum(jnp.sum(known), 1.0)  # mean over labelled pairs and real examples


def total_loss(wa: jax.Array, edge: jax.Array | None, lam: float) -> jax.Array:
  """L = L_WA + lambda * L_E (Eq. 8); stage 1 has no edge term."""
  return wa if edge is None else wa + lam * edge
