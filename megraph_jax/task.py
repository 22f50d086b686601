"""What is specific to facial action unit (AU) recognition, defined once: AU lists, the label policy, the
ImageNet normalisation, relation labels (Eq. 7's classes), class weights (Eq. 6's w) and the stage loss (Eq. 8).

Label policy. An AU label is 1 (occurs), 0 (does not) or ``UNLABELLED`` = 9, BP4D's "not coded". A 9
stays in the list files (the official tool writes them) and is left out everywhere else: L_WA ignores
the entry, L_E the AU pairs it is part of (relation label -1), the metrics skip it, and the class weights
count it neither as positive nor in the denominator. With only 0/1 labels all of this is the official code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from megraph_jax import losses
from megraph_jax.errors import ConfigError

# ----------------------------------------------------------------------------- AUs

BP4D_AUS: tuple[int, ...] = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)  # official BP4D order (label columns)
DISFA_AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)  # official DISFA order
DATASET_AUS: dict[str, tuple[int, ...]] = {"BP4D": BP4D_AUS, "DISFA": DISFA_AUS}

FACS_NAMES: dict[int, str] = {  # Facial Action Coding System names of the AUs
  1: "Inner brow raiser",
  2: "Outer brow raiser",
  4: "Brow lowerer",
  5: "Upper lid raiser",
  6: "Cheek raiser",
  7: "Lid tightener",
  9: "Nose wrinkler",
  10: "Upper lip raiser",
  11: "Nasolabial deepener",
  12: "Lip corner puller",
  13: "Sharp lip puller",
  14: "Dimpler",
  15: "Lip corner depressor",
  16: "Lower lip depressor",
  17: "Chin raiser",
  18: "Lip pucker",
  19: "Tongue show",
  20: "Lip stretcher",
  22: "Lip funneler",
  23: "Lip tightener",
  24: "Lip pressor",
  25: "Lips part",
  26: "Jaw drop",
  27: "Mouth stretch",
  32: "Lip bite",
  38: "Nostril dilator",
  39: "Nostril compressor",
  43: "Eyes closed",
  45: "Blink",
}

# OpenGraphAU (the official repository's OpenGraphAU/ folder): 27 main AUs, one graph node each, then 7 left/right
# pairs, each pair scored from one main node (the official Head's ``sub_list``) with its own two ``sub_sc`` vectors.
OPENGRAPHAU_MAIN_AUS: tuple[int, ...] = (
  *(1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 25, 26, 27, 32, 38, 39),
)
OPENGRAPHAU_SUB_NODES: tuple[int, ...] = (0, 1, 2, 4, 7, 8, 11)  # sub_list: main node index of each L/R pair
# The official labels of the pairs (L1/R1, ..., L14/R14). Node 8 is AU11 (nasolabial deepener) but its pair is
# labelled L12/R12 (AU12 is the lip corner puller); the official drawing and README call that pair "nasolabial
# deepener". We keep the official computation and label, and say so in the legend (AMBIGUOUS_SUB_AUS).
OPENGRAPHAU_SUB_LABELS: tuple[int, ...] = (1, 2, 4, 6, 10, 12, 14)
OPENGRAPHAU_AUS: tuple[str, ...] = tuple(f"AU{a}" for a in OPENGRAPHAU_MAIN_AUS) + tuple(
  f"AU{side}{a}" for a in OPENGRAPHAU_SUB_LABELS for side in "LR"
)  # the 41 outputs in model order: AU1 ... AU39, AUL1, AUR1, ..., AUL14, AUR14
AMBIGUOUS_SUB_AUS: dict[str, str] = {
  f"AU{side}12": f"{word} AU12 or AU11 (ambiguous: labelled {side}12 by the official tool, named '{word.lower()} "
  "nasolabial deepener' by its drawing and README, computed from the AU11 node)"
  for side, word in (("L", "Left"), ("R", "Right"))
}

UNLABELLED = 9  # BP4D's AU occurrence value of frames not coded for that AU (kept in lists, left out elsewhere)
NOT_ANNOTATED = -1  # OpenGraphAU's hybrid set: the source dataset does not annotate that AU (left out, as 9)
HYBRID = "hybrid"  # OpenGraphAU's dataset name (its list files: hybrid_{train,val,test}_{img_path,label}.txt)


def label_values(dataset_name: str) -> tuple[int, ...]:
  """The values a label file of ``dataset_name`` may hold: 0/1 and its "no label" value (9, or -1 for hybrid)."""
  return (NOT_ANNOTATED, 0, 1) if dataset_name == HYBRID else (0, 1, UNLABELLED)


def wa_loss_kind(head: str) -> str:
  """Which L_WA a model head trains with: OpenGraphAU's (mean over annotated entries) or ME-GraphAU's."""
  return "opengraphau" if head == "opengraphau" else "megraph"


# ImageNet normalisation of the backbones' inputs (torchvision's, as the official transforms): RGB in [0, 1].
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGENET_MEAN.flags.writeable = False
IMAGENET_STD.flags.writeable = False


def au_name(au: int) -> str:
  """12 -> 'AU12'."""
  return f"AU{int(au)}"


def au_number(name: str, *, key: str = "dataset.au_names") -> int:
  """'AU12' -> 12; a ConfigError (a ValueError) naming the config ``key`` otherwise."""
  m = re.fullmatch(r"AU(\d+)", str(name))
  if not m:
    raise ConfigError(f"config key {key!r}: {name!r} is not of the form AU<number>")
  return int(m.group(1))


def au_description(name: str) -> str:
  """What an output column means: ``AU12`` -> ``Lip corner puller``, ``AUL1`` -> ``Left inner brow raiser``.

  Unknown codes give ``''``; the OpenGraphAU pair labelled L12/R12 gives its ambiguity (``AMBIGUOUS_SUB_AUS``).
  """
  if name in AMBIGUOUS_SUB_AUS:
    return AMBIGUOUS_SUB_AUS[name]
  m = re.fullmatch(r"AU([LR]?)(\d+)", str(name))
  if not m or int(m.group(2)) not in FACS_NAMES:
    return ""
  facs = FACS_NAMES[int(m.group(2))]
  side = {"L": "Left", "R": "Right"}.get(m.group(1))
  return f"{side} {facs[0].lower()}{facs[1:]}" if side else facs


def au_legend(names: Sequence[str]) -> dict[str, str]:
  """``{column: description}`` of output columns (see :func:`au_description`); for the JSON output and README."""
  return {str(n): au_description(n) for n in names}


def au_names(dataset: Any) -> tuple[str, ...]:
  """The label columns of a config's ``dataset``: ``dataset.au_names`` if set, else the AUs of ``dataset.name``.

  The paper configs leave ``au_names`` empty (BP4D: 12 AUs, DISFA: 8); subsets (tests, synthetic sets) set it.
  """
  names = tuple(getattr(dataset, "au_names", None) or ())
  if names:
    return names
  if dataset.name == HYBRID:
    return OPENGRAPHAU_AUS
  if dataset.name not in DATASET_AUS:
    raise ConfigError(
      f"config key 'dataset.name' = {dataset.name!r} has no AU list of its own (known: "
      f"{', '.join(DATASET_AUS)}); set config key 'dataset.au_names' to its label columns"
    )
  return tuple(au_name(a) for a in DATASET_AUS[dataset.name])


def num_aus(dataset: Any) -> int:
  """N, the number of AUs (label columns) of a config's ``dataset``."""
  return len(au_names(dataset))


# ----------------------------------------------------------------------------- labels


def relation_labels(labels: npt.ArrayLike | jax.Array, *, keep_unlabelled: bool = False) -> np.ndarray | jax.Array:
  """4-class co-occurrence label of every ordered AU pair: ``[M, N]`` -> ``[M, N*N]`` int32, 2*y_j + y_k at j*N + k.

  -1 (ignored by ``losses.edge_loss``) where y_j or y_k is not 0/1 (``UNLABELLED``). ``keep_unlabelled``
  gives the official tool's raw 2*y_j + y_k there instead (what its AU_relation files hold). NumPy in,
  NumPy out; a ``jax.Array`` (or a tracer, e.g. inside ``jit``) gives a ``jax.Array``.
  """
  xp = jnp if isinstance(labels, jax.Array) else np
  y = xp.asarray(labels).astype(xp.int32)
  m, n = y.shape
  rel = 2 * y[:, :, None] + y[:, None, :]
  if not keep_unlabelled:
    known = (y == 0) | (y == 1)
    rel = xp.where(known[:, :, None] & known[:, None, :], rel, -1)
  return rel.reshape(m, n * n).astype(xp.int32)


def class_weights(
  labels: npt.ArrayLike,
  *,
  au_names: Sequence[str] | None = None,  # pylint: disable=W0621
  dtype: npt.DTypeLike = np.float32,
) -> np.ndarray:
  """Per-AU weights ``[N]`` from training labels ``[M, N]``: w = 1/rate, normalised to sum to N.

  ``rate`` is the fraction of rows with label 1 among the rows where the AU is labelled (0/1): BP4D's
  ``UNLABELLED`` 9 counts neither as positive nor in the denominator. With only 0/1 labels that is the
  official tool's rate (mean of label > 0). This is the one class-weight rule of the project: training
  ('labels'), the exporter's NAME_weight_foldK.txt and the tests use it. (The paper's text says the
  weights sum to 1; the official code, which produced its results, normalises to N.) ``au_names`` name
  the columns in the error; ``dtype`` of the result (the computation is float64).
  """
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.shape[0] == 0:
    raise ValueError(f"labels must be a non-empty [M, N] array, got shape {labels.shape}")
  known = (labels == 0) | (labels == 1)
  rate = np.sum(labels == 1, axis=0) / np.maximum(np.sum(known, axis=0), 1)
  zero = np.flatnonzero(rate == 0)
  if zero.size:
    names = f" ({', '.join(str(au_names[j]) for j in zero)})" if au_names is not None else ""
    raise ValueError(
      f"AU column(s) {zero.tolist()}{names} have no positive training label among the "
      f"{labels.shape[0]} rows (no 1 among the entries labelled 0/1); their class weight 1/rate "
      "would be infinite"
    )
  w = 1.0 / rate
  return (w / w.sum() * w.shape[0]).astype(dtype)


# ----------------------------------------------------------------------------- the stage loss


def loss_terms(
  out: Mapping[str, jax.Array],
  batch: Mapping[str, jax.Array],
  class_weights: jax.Array | None,
  lam: float,  # pylint: disable=W0621
  mask: jax.Array | None = None,
  *,
  wa_loss: str = "megraph",
) -> dict[str, jax.Array]:
  """The loss of one batch: L_WA (Eq. 6) for stage 1, L = L_WA + lam L_E (Eqs. 7-8) for stage 2.

  ``out``: the model's outputs, ``au_probs`` ``[B, N]`` and, for stage 2, ``edge_logits`` ``[B, N*N, 4]``;
  ``batch``: ``label`` ``[B, N]`` and optionally ``relation`` ``[B, N*N]`` (else ``relation_labels(label)``);
  ``class_weights``: ``[N]`` or None; ``mask``: optional ``[B]`` (1 = real example). Returns scalars
  {"wa", "total"} and, for stage 2, "edge". ``wa_loss``: 'megraph' (Eq. 6, mean over N AUs then examples) or
  'opengraphau' (mean over the annotated entries of the batch; ``wa_loss_kind``).
  """
  wa_fn = losses.opengraphau_wa_loss if wa_loss == "opengraphau" else losses.weighted_asymmetric_loss
  wa = wa_fn(out["au_probs"], batch["label"], class_weights, mask=mask)
  if "edge_logits" not in out:
    return {"wa": wa, "total": wa}
  relations = batch["relation"] if "relation" in batch else relation_labels(batch["label"])
  edge = losses.edge_loss(out["edge_logits"], relations, mask=mask)
  return {"wa": wa, "edge": edge, "total": losses.total_loss(wa, edge, lam)}
