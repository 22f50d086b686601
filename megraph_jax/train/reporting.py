"""Results: the all-positive baseline, paper-style Markdown F1 tables (Tables 1-2), results.json/.md."""

from __future__ import annotations

import json
import logging as std_logging
import os
from typing import Any, Sequence

import numpy as np
from absl import logging as absl_logging


def all_positive_f1(labels: np.ndarray) -> np.ndarray:
  """Per-AU F1 of predicting every AU present: 2r / (1 + r), r the positive rate of ``labels`` ``[M, N]``.

  Unlabelled entries (not 0/1) are left out, as in the metrics.
  """
  y = np.asarray(labels)
  r = np.sum(y == 1, axis=0) / np.maximum(np.sum((y == 0) | (y == 1), axis=0), 1)
  return 2 * r / (1 + r)


def f1_table(rows: Sequence[tuple[str, dict[str, float]]], au_names: Sequence[str]) -> str:
  """Markdown table laid out as the paper's Tables 1-2: one row per method, AU columns then Avg., F1 in %."""
  head = "| Method | " + " | ".join(au_names) + " | Avg. |"
  rule = "|---|" + "---:|" * (len(au_names) + 1)
  lines = [head, rule]
  for name, f1 in rows:
    vals = [100.0 * float(f1[a]) for a in au_names]
    lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {np.mean(vals):.1f} |")
  return "\n".join(lines)


def mean_f1_dicts(dicts: Sequence[dict[str, float]]) -> dict[str, float]:
  """Per-AU average of several {AU: F1} dicts (the paper's average over folds)."""
  return {a: float(np.mean([d[a] for d in dicts])) for a in dicts[0]}


def write_results(workdir: str, results: dict[str, Any], markdown: str, *, name: str = "results") -> None:
  """Writes ``<name>.json`` and ``<name>.md`` into ``workdir``."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f"{name}.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, f"{name}.md"), "w") as f:
    f.write(markdown + "\n")


class _DropLibraryInfo:
  """absl log filter: drops INFO records of chatty libraries (orbax), keeps their warnings."""

  def __init__(self, parts: Sequence[str]):
    self.parts = tuple(parts)

  def filter(self, record) -> bool:
    return record.levelno > 20 or not any(p in record.pathname for p in self.parts)


def quiet_library_logs(parts: Sequence[str] = ("/orbax/",)) -> None:
  """Keeps the console to our progress lines: INFO logs of orbax are dropped."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
    handler.addFilter(_DropLibraryInfo(parts))
  std_logging.getLogger("absl").setLevel(std_logging.INFO)
