"""Procedural synthetic AU faces written in the official BP4D/DISFA on-disk layout (NumPy + Pillow only).

Every synthetic subject has its own identity (face shape, skin tone, hair, feature positions) and
"tasks" (short clips). Per frame, a latent expression model (happy, sad, surprise, anger, disgust,
pain, talking, tension and a few paired "micro" movements) with temporal smoothing and per-subject
biases gives a continuous score per AU; the label is ``score > 0`` and the rendered intensity grows
with the score, so frames near the threshold are ambiguous as in real data. Per-AU biases are
calibrated so the occurrence rates look like BP4D's. AU2, AU14, AU24 and AU26 are drawn faintly:
their related AUs (AU1, AU12, AU23, AU25) carry information about them.

The output is ``ROOT/img/<subject>/<task>/<frame>.jpg`` (DISFA: ``ROOT/img/<subject>/<frame>.png``)
and ``ROOT/list/NAME_{train,test}_{img_path,label}_foldK.txt``, ``NAME_train_AU_relation_foldK.txt``
and ``NAME_weight_foldK.txt`` for three subject-independent folds, byte-identical for a given seed.

The faces are drawn by ``megraph_jax.data.synthetic_faces``. ``configs/synthetic.py`` generates a set on first use
(``ensure_generated``); CLI: ``python -m data_pipelines.synthetic OUT --name BP4D --num-subjects 9
--frames-per-subject 40``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Sequence

import numpy as np
from absl import logging
from PIL import Image

from megraph_jax import task
from megraph_jax.data.synthetic_faces import ALL_AUS, render_face, sample_identity
from megraph_jax.data.synthetic_faces import AU_INDEX as _A

VERSION = 1  # Bump when the rendering or the label model changes (keys the ensure_generated cache).

AU_NAMES: dict[int, str] = {au: task.FACS_NAMES[au].title() for au in ALL_AUS}  # as written to synthetic.json
# Target occurrence rates (BP4D-like; AU9/25/26 DISFA-like but less extreme).
TARGET_RATES: dict[int, float] = {
  1: 0.21,
  2: 0.17,
  4: 0.20,
  6: 0.46,
  7: 0.55,
  9: 0.12,
  10: 0.59,
  12: 0.56,
  14: 0.47,
  15: 0.17,
  17: 0.34,
  23: 0.17,
  24: 0.15,
  25: 0.35,
  26: 0.18,
}
# AUs drawn at reduced visual intensity (factor), so that related AUs carry information.
FAINT_AUS: dict[int, float] = {2: 0.45, 14: 0.4, 24: 0.45, 26: 0.5}

_NA = len(ALL_AUS)  # columns of the full AU state (_A: AU -> column)

# Latent components: name -> {AU: loading}. The first _NUM_EXPR are task-level expressions.
_COMPONENTS: tuple[tuple[str, dict[int, float]], ...] = (
  ("happy", {6: 1.5, 12: 1.7, 7: 0.8, 10: 1.0, 14: 0.6, 25: 0.5, 4: -1.0, 15: -0.6, 17: -0.3}),
  ("sad", {1: 1.0, 4: 0.8, 15: 1.1, 17: 0.8, 12: -0.8, 24: 0.3}),
  ("surprise", {1: 1.1, 2: 1.2, 25: 0.9, 26: 0.9, 4: -0.6, 7: -0.3}),
  ("anger", {4: 1.1, 7: 0.9, 23: 1.1, 24: 1.0, 17: 0.5, 10: 0.3, 12: -0.8}),
  ("disgust", {9: 1.2, 10: 1.0, 4: 0.6, 7: 0.5, 17: 0.5, 15: 0.3, 6: 0.3}),
  ("pain", {4: 0.8, 6: 0.9, 7: 1.0, 9: 0.6, 10: 0.8, 25: 0.4, 14: 0.3}),
  ("talk", {25: 0.9, 26: 0.5, 14: 0.6, 12: 0.4, 10: 0.4, 17: 0.3}),
  ("tension", {7: 0.7, 14: 0.6, 23: 0.6, 24: 0.6, 17: 0.5, 4: 0.3}),
  ("brow_raise", {1: 1.2, 2: 1.2}),
  ("duchenne", {6: 1.5, 12: 1.5, 10: 0.7}),
  ("lip_press", {23: 1.0, 24: 1.1}),
  ("chin", {15: 1.0, 17: 1.0}),
  ("mouth_open", {25: 1.0, 26: 0.8}),
)
_NUM_EXPR = 8
_W = np.zeros((len(_COMPONENTS), _NA))  # [K, 15] loadings.
for _k, (_, _load) in enumerate(_COMPONENTS):
  for _au, _v in _load.items():
    _W[_k, _A[_au]] = _v
_RHO = 0.75  # AR(1) coefficient between consecutive frames.


def _ar1(rng: np.random.Generator, t: int, k: int, rho: float = _RHO) -> np.ndarray:
  """Unit-variance AR(1) sequences ``[t, k]``."""
  eps = rng.standard_normal((t, k))
  out = np.empty_like(eps)
  out[0] = eps[0]
  c = np.sqrt(1.0 - rho * rho)
  for i in range(1, t):
    out[i] = rho * out[i - 1] + c * eps[i]
  return out


def _task_lengths(num_frames: int, max_tasks: int) -> list[int]:
  """Splits a subject's frames into tasks of (nearly) equal length."""
  n = max(1, min(max_tasks, num_frames // 5))
  base, extra = divmod(num_frames, n)
  return [base + (1 if i < extra else 0) for i in range(n)]


def _latent_scores(rng: np.random.Generator, lengths: Sequence[int]) -> np.ndarray:
  """Unbiased AU scores ``[T, 15]`` of one subject's frames, tasks concatenated."""
  subject_bias = 0.3 * rng.standard_normal(_NA)
  expr_pref = rng.dirichlet(np.ones(_NUM_EXPR))
  out = []
  for t in lengths:
    e = np.zeros((t, len(_COMPONENTS)))
    # Dominant expression of the task with a smooth onset/apex/offset envelope.
    if rng.random() < 0.85:
      d = rng.choice(_NUM_EXPR, p=0.5 * expr_pref + 0.5 / _NUM_EXPR)
      env = 1.0 / (1.0 + np.exp(-(1.8 * _ar1(rng, t, 1, 0.85)[:, 0] + rng.normal(0.8, 0.8))))
      e[:, d] = rng.uniform(0.7, 1.5) * env
    # Occasional secondary expressions and micro-movements (rectified AR(1)).
    sec = np.maximum(_ar1(rng, t, len(_COMPONENTS)) - 0.6, 0.0)
    sec[:, :_NUM_EXPR] *= 0.8
    sec[:, _NUM_EXPR:] *= 1.6
    e += sec
    noise = 0.3 * _ar1(rng, t, _NA)
    out.append(e @ _W + noise + subject_bias)
  return np.concatenate(out, axis=0)


@functools.lru_cache(maxsize=None)
def _calibrated_bias() -> tuple[np.ndarray, float]:
  """Per-AU biases that give TARGET_RATES on a large simulated sample (fixed seed); and the AU26 penalty."""
  rng = np.random.default_rng(12345)
  scores = np.concatenate([_latent_scores(rng, _task_lengths(48, 8)) for _ in range(400)])
  bias = np.zeros(_NA)
  penalty = 1.0  # AU26 rarely occurs without AU25 (jaw drop with closed lips).
  for au in ALL_AUS:
    i = _A[au]
    s = scores[:, i]
    if au == 26:
      s = s - penalty * (scores[:, _A[25]] + bias[_A[25]] <= 0)
    bias[i] = -np.quantile(s, 1.0 - TARGET_RATES[au])
  return bias, penalty


def sample_subject_scores(rng: np.random.Generator, lengths: Sequence[int]) -> np.ndarray:
  """AU scores ``[T, 15]`` (columns in ALL_AUS order) of one subject; label = score > 0.

  Every AU has at least one positive frame per subject: if none does, the highest-scoring frame is
  set just above the threshold (a weak occurrence), so every fold has positives of every AU.
  """
  bias, penalty = _calibrated_bias()
  s = _latent_scores(rng, lengths) + bias
  s[:, _A[26]] -= penalty * (s[:, _A[25]] <= 0)
  for i in range(_NA):
    if not np.any(s[:, i] > 0):
      s[np.argmax(s[:, i]), i] = 0.05
  return s


def render_intensity(scores: np.ndarray) -> np.ndarray:
  """Visual intensity in [0, 1] of each AU from its score (faint AUs scaled down); same shape."""
  r = np.clip((1.0 / (1.0 + np.exp(-2.5 * scores)) - 0.2) / 0.8, 0.0, 1.0)
  faint = np.array([FAINT_AUS.get(au, 1.0) for au in ALL_AUS])
  return r * faint


# ------------------------------------------------------------------------------------------------
# Dataset writing.


def _subject_names(name: str, n: int) -> list[str]:
  """Subject folder names: F001, M001, F002, ... (BP4D style) or SN001, SN002, ... (DISFA style)."""
  if name == "DISFA":
    return [f"SN{k + 1:03d}" for k in range(n)]
  return [f"{'FM'[k % 2]}{k // 2 + 1:03d}" for k in range(n)]


def _resolve_aus(name: str, aus: Sequence[int] | None) -> tuple[int, ...]:
  """The label columns: ``aus`` or the dataset's default AU list."""
  if aus is None:
    if name not in task.DATASET_AUS:
      raise ValueError(f"no default AU list for dataset name {name!r}; pass aus= (a subset of {ALL_AUS})")
    return task.DATASET_AUS[name]
  aus = tuple(int(a) for a in aus)
  bad = [a for a in aus if a not in _A]
  if bad or not aus or len(set(aus)) != len(aus):
    raise ValueError(f"aus must be distinct AUs from {ALL_AUS}; got {aus}")
  return aus


def generate(
  root: str,
  *,
  name: str = "BP4D",
  num_subjects: int = 9,
  frames_per_subject: int = 40,
  image_size: int = 128,
  seed: int = 0,
  aus: Sequence[int] | None = None,
) -> str:
  """Writes a synthetic AU dataset in the official layout under ``root``; returns ``root``.

  Subjects are split into 3 subject-independent folds; fold k's test set is the k-th group and its
  training set the other two. ``ROOT/synthetic.json`` (written last) records the parameters.
  """
  aus = _resolve_aus(name, aus)
  if num_subjects < 3:
    raise ValueError(f"num_subjects must be >= 3 for 3 subject-independent folds, got {num_subjects}")
  if frames_per_subject < 1 or image_size < 32:
    raise ValueError(f"need frames_per_subject >= 1 and image_size >= 32, got {frames_per_subject}, {image_size}")
  cols = [_A[a] for a in aus]
  disfa_style = name == "DISFA"
  ext = "png" if disfa_style else "jpg"
  os.makedirs(os.path.join(root, "list"), exist_ok=True)
  subjects = _subject_names(name, num_subjects)
  paths: list[list[str]] = []
  labels: list[np.ndarray] = []
  for si, subj in enumerate(subjects):
    srng = np.random.default_rng([seed, si, 0])
    ident = sample_identity(srng)
    lengths = _task_lengths(frames_per_subject, 1 if disfa_style else 8)
    scores = sample_subject_scores(srng, lengths)  # [T, 15]
    intens = render_intensity(scores)
    rel_paths = []
    if disfa_style:
      rel_paths = [f"{subj}/{f}.{ext}" for f in range(frames_per_subject)]
    else:
      for ti, n in enumerate(lengths):
        start = int(srng.integers(100, 3000))
        rel_paths += [f"{subj}/T{ti + 1}/{start + f}.{ext}" for f in range(n)]
    for fi, rel in enumerate(rel_paths):
      frng = np.random.default_rng([seed, si, 1, fi])
      img = render_face(ident, intens[fi], frng, image_size)
      out = os.path.join(root, "img", rel)
      os.makedirs(os.path.dirname(out), exist_ok=True)
      if ext == "jpg":
        Image.fromarray(img).save(out, format="JPEG", quality=92)
      else:
        Image.fromarray(img).save(out, format="PNG", compress_level=1)
    paths.append(rel_paths)
    labels.append((scores[:, cols] > 0).astype(np.int64))

  fold_of = np.empty(num_subjects, np.int64)
  fold_of[np.random.default_rng([seed, 7]).permutation(num_subjects)] = np.arange(num_subjects) % 3
  lst = os.path.join(root, "list")
  for k in range(1, 4):
    for split, keep in (("train", fold_of != k - 1), ("test", fold_of == k - 1)):
      idx = np.flatnonzero(keep)
      p = [q for j in idx for q in paths[j]]
      y = np.concatenate([labels[j] for j in idx])
      with open(os.path.join(lst, f"{name}_{split}_img_path_fold{k}.txt"), "w") as f:
        f.write("".join(q + "\n" for q in p))
      np.savetxt(os.path.join(lst, f"{name}_{split}_label_fold{k}.txt"), y, fmt="%d")
      if split == "train":
        np.savetxt(os.path.join(lst, f"{name}_train_AU_relation_fold{k}.txt"), task.relation_labels(y), fmt="%d")
        np.savetxt(
          os.path.join(lst, f"{name}_weight_fold{k}.txt"),
          task.class_weights(y, dtype=np.float64)[None],
          fmt="%f",
          delimiter="\t",
        )
  meta = dict(
    version=VERSION,
    name=name,
    num_subjects=num_subjects,
    frames_per_subject=frames_per_subject,
    image_size=image_size,
    seed=seed,
    aus=list(aus),
    au_names=[AU_NAMES[a] for a in aus],
    faint_aus={str(a): FAINT_AUS[a] for a in aus if a in FAINT_AUS},
    folds={str(k): [subjects[j] for j in np.flatnonzero(fold_of == k - 1)] for k in range(1, 4)},
  )
  with open(os.path.join(root, "synthetic.json"), "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)
  return root


def ensure_generated(
  cache_dir: str,
  *,
  name: str = "BP4D",
  num_subjects: int = 9,
  frames_per_subject: int = 40,
  image_size: int = 128,
  seed: int = 0,
  aus: Sequence[int] | None = None,
) -> str:
  """Returns the root of a cached synthetic dataset with these parameters, generating it on first use.

  Generation writes to a temporary folder in ``cache_dir`` that is renamed into place when complete,
  so concurrent callers and interrupted runs never see a partial dataset.
  """
  aus = _resolve_aus(name, aus)
  key = f"{name}_s{num_subjects}_f{frames_per_subject}_px{image_size}_seed{seed}_au{'-'.join(map(str, aus))}_v{VERSION}"
  root = os.path.join(cache_dir, key)
  if os.path.isfile(os.path.join(root, "synthetic.json")):
    return root
  os.makedirs(cache_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{key}.tmp", dir=cache_dir)
  logging.info(
    "generating the synthetic %s set (%d images of %d px) in %s: once, later runs reuse it",
    name,
    num_subjects * frames_per_subject,
    image_size,
    root,
  )
  try:
    generate(
      tmp,
      name=name,
      num_subjects=num_subjects,
      frames_per_subject=frames_per_subject,
      image_size=image_size,
      seed=seed,
      aus=aus,
    )
    if os.path.isdir(root) and not os.path.isfile(os.path.join(root, "synthetic.json")):
      shutil.rmtree(root, ignore_errors=True)  # A partial copy from an older, non-atomic writer.
    try:
      os.rename(tmp, root)
    except OSError:
      if not os.path.isfile(os.path.join(root, "synthetic.json")):  # Not a lost race: a real error.
        raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return root
