"""The on-disk layout of a training workdir, defined once: where each fold's stages live and what a stage holds.

  <workdir>/fold<k>/stage<s>/
      checkpoints/<step>/     the train state (model + optimizer) of the last ``keep_checkpoints`` steps (orbax)
      best/<step>/            the model state of the epoch with the best test mean F1 (orbax)
      model.json              the model spec (``megraph_jax.model_factory.ModelSpec``), what the loader rebuilds
      config.json             the stage's experiment config and where its initial weights came from
      history.json            one evaluation per evaluated epoch
      unreadable_checkpoints/ checkpoints that failed to restore, set aside (never deleted)
  <workdir>/results.json, results.md        the run's results and F1 table (mode 'folds': every fold, their averages)
  <workdir>/results_fold<k>.json, .md       mode 'folds': the run of fold k (``megraph_jax.launch.sweep.fold_runs``)

Only paths and directory listings here (no orbax, no JAX): the loader, the checkpoints, training, sweeps and results
all read the layout from this module.
"""

from __future__ import annotations

import os

MODEL_JSON = "model.json"  # also beside the state/ of a saved (converted) model: megraph_jax.loader.save
STAGE_CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
BEST = "best"
HISTORY = "history.json"
UNREADABLE = "unreadable_checkpoints"


def stage_dir(workdir: str, fold: int, stage: int) -> str:
  """``<workdir>/fold<fold>/stage<stage>``."""
  return os.path.join(workdir, f"fold{fold}", f"stage{stage}")


def checkpoints_dir(path: str) -> str:
  """Where a stage's train-state checkpoints are (one folder per step)."""
  return os.path.join(path, CHECKPOINTS)


def best_dir(path: str) -> str:
  """Where a stage's best model state is."""
  return os.path.join(path, BEST)


def checkpoint_dir(path: str, step: int) -> str:
  """The train-state checkpoint of ``step``."""
  return os.path.join(path, CHECKPOINTS, str(step))


def latest_step(path: str) -> int | None:
  """The newest finished (non-temporary) checkpoint step in ``<stage_dir>/checkpoints``, without opening it."""
  directory = checkpoints_dir(path)
  steps = [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []
  return max(steps) if steps else None


def has_checkpoints(path: str) -> bool:
  """Whether ``stage_dir`` holds a checkpoint: a rerun resumes it instead of starting afresh."""
  return latest_step(path) is not None


def checkpoint_steps(workdir: str) -> dict[str, int]:
  """{'fold1/stage1': latest checkpoint step} of the stages under ``workdir`` (empty for a fresh run)."""
  out = {}
  if not os.path.isdir(workdir):
    return out
  for fold in sorted(os.listdir(workdir)):
    for stage in sorted(os.listdir(os.path.join(workdir, fold))) if fold.startswith("fold") else []:
      step = latest_step(os.path.join(workdir, fold, stage))
      if step is not None:
        out[f"{fold}/{stage}"] = step
  return out


def stage_dir_of(path: str) -> str | None:
  """The training stage directory (model.json + best/ or checkpoints/) that ``path`` is, or whose sub-folder it is."""
  for d in (path, os.path.dirname(path.rstrip("/"))):
    if os.path.isfile(os.path.join(d, MODEL_JSON)) and any(
      os.path.isdir(os.path.join(d, s)) for s in (BEST, CHECKPOINTS)
    ):
      return d
  return None


def names_checkpoints(path: str) -> bool:
  """Whether ``path`` is a stage's ``checkpoints/`` folder (the latest train state) rather than the stage or best/."""
  return os.path.basename(path.rstrip("/")) == CHECKPOINTS


def names_best(path: str) -> bool:
  """Whether ``path`` is a stage's ``best/`` folder (e.g. where a stage 2 started from)."""
  return os.path.basename(path.rstrip("/")) == BEST
