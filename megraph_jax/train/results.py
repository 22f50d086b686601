"""Typed results of runs (an evaluation, a trained stage, a fold, a whole run) and the one F1 table built from them.

``results.json`` is ``RunResult.to_json()``; every table is built here from ``RunResult``s: a run's ``results.md``
by :func:`table`, a sweep's ``sweep.md`` (the Table 3 ablation is a sweep) by :func:`sweep_table`, both averaging
folds with :func:`fold_average`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from megraph_jax import stage_dirs
from megraph_jax.train import reporting

SELECTED = " (selected on the test fold)"


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """Per-AU F1 and accuracy on a test split, their means and the weighted asymmetric loss (L_WA)."""

  f1: dict[str, float]
  accuracy: dict[str, float]
  mean_f1: float
  mean_accuracy: float
  loss: float
  num_examples: int = 0
  num_labelled: dict[str, int] = dataclasses.field(default_factory=dict)
  epoch: int | None = None  # the epoch and step evaluated, when the result comes from training
  step: int | None = None

  def at(self, epoch: int, step: int) -> EvalResult:
    return dataclasses.replace(self, epoch=epoch, step=step)

  def to_json(self) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> EvalResult:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclasses.dataclass(frozen=True)
class StageResult:
  """One trained (or evaluated) stage: its last and best evaluations, and where its weights started."""

  stage: int
  fold: int
  last: EvalResult
  best: EvalResult
  steps: int = 0
  epochs: int = 0
  init: str = ""
  history: tuple[EvalResult, ...] = ()

  @property
  def from_best(self) -> bool:
    """Started from stage 1's best epoch (chosen on the test fold)."""
    return stage_dirs.names_best(self.init)

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out.update(last=self.last.to_json(), best=self.best.to_json())
    out["history"] = [{"epoch": h.epoch, "step": h.step, "mean_f1": h.mean_f1, "loss": h.loss} for h in self.history]
    return out

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> StageResult:
    history = tuple(
      EvalResult(f1={}, accuracy={}, mean_f1=h["mean_f1"], mean_accuracy=float("nan"), loss=h["loss"],
                 epoch=h["epoch"], step=h["step"])
      for h in d.get("history", ())
    )  # fmt: skip
    return cls(stage=d["stage"], fold=d["fold"], last=EvalResult.from_json(d["last"]),
               best=EvalResult.from_json(d["best"]), steps=d.get("steps", 0), epochs=d.get("epochs", 0),
               init=d.get("init", ""), history=history)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class FoldResult:
  """The stages of one fold, the split sizes and the all-positive baseline of its test split."""

  fold: int
  dataset_root: str
  num_train: int
  num_test: int
  all_positive_f1: dict[str, float]
  stages: dict[int, StageResult] = dataclasses.field(default_factory=dict)
  checkpoint: str = ""  # mode 'eval': the checkpoint evaluated

  @property
  def all_positive_mean_f1(self) -> float:
    return float(np.mean(list(self.all_positive_f1.values())))

  def with_stage(self, result: StageResult) -> FoldResult:
    return dataclasses.replace(self, stages={**self.stages, result.stage: result})

  def to_json(self) -> dict[str, Any]:
    out = {k: getattr(self, k) for k in ("fold", "dataset_root", "num_train", "num_test", "all_positive_f1")}
    out["all_positive_mean_f1"] = self.all_positive_mean_f1
    if self.checkpoint:
      out["checkpoint"] = self.checkpoint
    out.update({f"stage{s}": r.to_json() for s, r in sorted(self.stages.items())})
    return out

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> FoldResult:
    stages = {s: StageResult.from_json(d[f"stage{s}"]) for s in (1, 2) if f"stage{s}" in d}
    return cls(fold=int(d["fold"]), dataset_root=d.get("dataset_root", ""), num_train=d.get("num_train", 0),
               num_test=d.get("num_test", 0), all_positive_f1=d["all_positive_f1"], stages=stages,
               checkpoint=d.get("checkpoint", ""))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RunResult:
  """What ``megraph_jax.train.experiment.run`` returns and writes as ``results.json`` (or ``results_eval.json``)."""

  mode: str
  workdir: str
  folds: dict[int, FoldResult] = dataclasses.field(default_factory=dict)
  au_names: tuple[str, ...] = ()
  wall_time_s: float = 0.0
  config: dict[str, Any] = dataclasses.field(default_factory=dict)
  preempted: bool = False
  message: str = ""

  def to_json(self) -> dict[str, Any]:
    return {"mode": self.mode, "workdir": self.workdir, "wall_time_s": self.wall_time_s,
            "au_names": list(self.au_names), "folds": {str(k): f.to_json() for k, f in self.folds.items()},
            "config": self.config}  # fmt: skip

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> RunResult:
    folds = {int(k): FoldResult.from_json(v) for k, v in d["folds"].items()}
    names = d.get("au_names") or next((list(f.all_positive_f1) for f in folds.values()), [])
    return cls(mode=d["mode"], workdir=d.get("workdir", ""), folds=folds, au_names=tuple(names),
               wall_time_s=d.get("wall_time_s", 0.0), config=d.get("config", {}))  # fmt: skip

  @property
  def mean_f1(self) -> float | None:
    """Mean F1 of the last epoch of the last stage, averaged over the folds (None before any result)."""
    values = [f.stages[max(f.stages)].last.mean_f1 for f in self.folds.values() if f.stages]
    return float(np.mean(values)) if values else None

  @classmethod
  def read(cls, path: str) -> RunResult:
    with open(path) as f:
      return cls.from_json(json.load(f))


def run_rows(run: RunResult, *, label: str = "", epochs: Sequence[str] = ("last", "best")) -> list[tuple[str, Any]]:
  """Rows of one run: per fold and stage (last and/or best epoch), the fold averages, the all-positive baseline.

  Rows chosen with the test fold (a stage's best epoch, a stage 2 started from stage 1's best) say so.
  """
  prefix = f"{label}, " if label else ""
  rows = []
  for k, fr in sorted(run.folds.items()):
    for s, r in sorted(fr.stages.items()):
      if run.mode == "eval":
        rows.append((f"{prefix}stage {s}, fold {k} ({os.path.basename(fr.checkpoint.rstrip('/'))})", r.last.f1))
        continue
      origin = ", from stage 1's best epoch" + SELECTED if s == 2 and r.from_best else ""
      for which in epochs:
        res = getattr(r, which)
        note = origin or (SELECTED if which == "best" else "")
        rows.append((f"{prefix}stage {s}, fold {k}, {which} epoch ({res.epoch}){note}", res.f1))
    rows.append((f"{prefix}all-positive baseline, fold {k}", fr.all_positive_f1))
  folds = list(run.folds.values())
  if len(folds) > 1:
    for s in (1, 2):
      rs = [fr.stages[s] for fr in folds if s in fr.stages]
      if len(rs) != len(folds):
        continue
      for which in epochs:
        note = SELECTED if which == "best" or (s == 2 and any(r.from_best for r in rs)) else ""
        rows.append(fold_average(f"{prefix}stage {s}, {which} epoch", [getattr(r, which).f1 for r in rs], note))
    rows.append(fold_average(f"{prefix}all-positive baseline", [fr.all_positive_f1 for fr in folds]))
  return rows


def fold_average(label: str, f1s: Sequence[dict[str, float]], note: str = "") -> tuple[str, dict[str, float]]:
  """The fold-average row of every table: ``'<label>, avg. over N folds<note>'`` and the per-AU F1 averaged over the
  N folds' ``f1s``."""
  return f"{label}, avg. over {len(f1s)} folds{note}", reporting.mean_f1_dicts(f1s)


def table(runs: dict[str, RunResult], *, epochs: Sequence[str] = ("last", "best")) -> str:
  """One Markdown F1 table (paper's Tables 1-3 layout) over named runs of the same AUs."""
  names = next(iter(runs.values())).au_names
  rows = []
  for label, run in runs.items():
    if tuple(run.au_names) != tuple(names):
      raise ValueError(f"run {label!r} has AUs {run.au_names}, the others {names}: one table needs one AU set")
    rows += run_rows(run, label=label if len(runs) > 1 else "", epochs=epochs)
  return reporting.f1_table(rows, names)


def sweep_table(runs: Sequence[tuple[str, str, RunResult]]) -> str:
  """A sweep's Markdown table over ``(run name, group, result)`` of its finished runs (last epochs): per run, fold and
  stage, then each group (runs that differ only in the fold) averaged over its folds, then each fold's all-positive
  baseline. The runs must share one AU set."""
  rows, baselines, groups = [], {}, {}
  for name, group, run in runs:
    for fold, fr in sorted(run.folds.items()):
      baselines.setdefault(fold, fr.all_positive_f1)
      for stage, sr in sorted(fr.stages.items()):
        rows.append((f"{name} (fold {fold}, stage {stage})", sr.last.f1))
        groups.setdefault(f"{group} [stage {stage}]", []).append(sr.last.f1)
  for group, f1s in groups.items():
    if len(f1s) > 1 and len(baselines) > 1:
      rows.append(fold_average(group, f1s))
  rows += [(f"all-positive baseline, fold {k}", f1) for k, f1 in sorted(baselines.items())]
  return reporting.f1_table(rows, runs[0][2].au_names)
