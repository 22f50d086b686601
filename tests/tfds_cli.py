"""The two build commands the builder tests run: ours, and the `tfds build` command where it is installed."""

from __future__ import annotations

import importlib.util
import sys

import pytest

TFDS_CLI_HINT = (
  "`tfds build` needs apache-beam and mlcroissant: pip install mlcroissant==1.1.1 && "
  "pip install --no-deps -r requirements-tfds-cli.txt"
)


def build_command(kind: str, dataset: str) -> list[str]:
  """argv of ``python -m data_pipelines.build DATASET`` (kind 'module') or ``tfds build data_pipelines/DATASET.py``
  (kind 'tfds'; the test is skipped when that command's imports are not installed)."""
  if kind == "module":
    return [sys.executable, "-m", "data_pipelines.build", dataset]
  missing = [m for m in ("apache_beam", "mlcroissant") if importlib.util.find_spec(m) is None]
  if missing:
    pytest.skip(f"{', '.join(missing)} not installed; {TFDS_CLI_HINT}")
  # The `tfds` console script is tensorflow_datasets.scripts.cli.main:launch_cli.
  return [
    sys.executable,
    "-c",
    "import sys; from tensorflow_datasets.scripts.cli.main import launch_cli; "
    "sys.argv[0] = 'tfds'; sys.exit(launch_cli())",
    "build",
    f"data_pipelines/{dataset}.py",
  ]
