"""AU detection metrics: per-AU F1, mean F1 and accuracy at a threshold, accumulated over batches."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def confusion_counts(
  probs: jax.Array, labels: jax.Array, mask: jax.Array | None = None, threshold: float = 0.5
) -> jax.Array:
  """Per-AU [TP, FP, TN, FN] counts ``[N, 4]`` (int32) of ``probs >= threshold``; jittable.

  Entries whose label is not 0/1 (BP4D's 9, "not coded") are not counted, nor examples with mask 0.
  """
  pred = probs >= threshold
  y = labels == 1
  m = jnp.ones(probs.shape[:1], bool) if mask is None else mask > 0.5
  m = m[:, None] & ((labels == 0) | (labels == 1))  # [B, N]
  tp = jnp.sum(pred & y & m, axis=0)
  fp = jnp.sum(pred & ~y & m, axis=0)
  tn = jnp.sum(~pred & ~y & m, axis=0)
  fn = jnp.sum(~pred & y & m, axis=0)
  return jnp.stack([tp, fp, tn, fn], axis=-1).astype(jnp.int32)


@dataclasses.dataclass
class AUMetrics:
  """Accumulates confusion counts over batches; ``compute()`` gives F1/accuracy per AU and their means."""

  au_names: tuple[str, ...]
  counts: np.ndarray | None = None  # [N, 4] int64: TP, FP, TN, FN
  examples: int = 0  # examples seen (real, mask 1), whatever their labels

  def update(self, counts, num_examples: int) -> "AUMetrics":
    """Adds confusion counts ``[N, 4]`` of ``num_examples`` examples (real ones, whatever their labels)."""
    counts = np.asarray(counts, np.int64)
    if counts.shape != (len(self.au_names), 4):
      raise ValueError(f"counts must be [{len(self.au_names)}, 4], got {counts.shape}")
    self.counts = counts if self.counts is None else self.counts + counts
    self.examples += int(num_examples)
    return self

  def update_from_predictions(self, probs, labels, mask=None, threshold: float = 0.5) -> "AUMetrics":
    n = np.shape(probs)[0] if mask is None else int(np.sum(np.asarray(mask) > 0.5))
    return self.update(
      confusion_counts(jnp.asarray(probs), jnp.asarray(labels), None if mask is None else jnp.asarray(mask), threshold),
      n,
    )

  def compute(self) -> dict:
    if self.counts is None:
      raise ValueError("AUMetrics.compute() called before any update")
    tp, fp, tn, fn = (self.counts[:, i].astype(np.float64) for i in range(4))
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)  # sklearn's zero_division=0
    acc = (tp + tn) / np.maximum(tp + fp + tn + fn, 1)
    return {
      "f1": dict(zip(self.au_names, f1.tolist())),
      "accuracy": dict(zip(self.au_names, acc.tolist())),
      "mean_f1": float(np.mean(f1)),
      "mean_accuracy": float(np.mean(acc)),
      "num_examples": self.examples,
      "num_labelled": dict(zip(self.au_names, self.counts.sum(axis=1).tolist())),  # label 0/1, per AU
    }
