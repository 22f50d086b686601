"""The Colab notebooks execute top to bottom at tiny settings (MEGRAPH_TINY=1), without data or a TPU."""

import glob
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

COLAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "colab")
# notebook -> files (globs, relative to its working directory) it must have written
NOTEBOOKS = {
  "quickstart": [
    "quickstart_out/*_au.png",
    "quickstart_out/*_graph.png",
    "quickstart_out/clip_timeline.png",
    "quickstart_out/predictions.csv",
    "quickstart_out/cli_pictures/*_graph.png",
  ],
  "train_synthetic": ["runs/synthetic/results.md", "runs/synthetic/curves.png", "runs/synthetic/pictures/*_graph.png"],
  "bp4d_on_tpu": ["runs/bp4d/results.md", "runs/bp4d/pictures/*_graph.png"],
}


def _load(name):
  return nbformat.read(os.path.join(COLAB, f"{name}.ipynb"), as_version=4)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_is_clean_and_opens_with_the_install_cell(name):
  nb = _load(name)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert "pip" in code[0].source and "install" in code[0].source, f"{name}.ipynb: first code cell must install"
  for c in code:
    assert not c.outputs and c.execution_count is None, f"{name}.ipynb: clear the outputs before committing"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_executes(name, tmp_path, monkeypatch):
  monkeypatch.setenv("MEGRAPH_TINY", "1")
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
  for var in ("MEGRAPH_CHECKPOINT", "BP4D_PREPARED", "BP4D_RAW"):
    monkeypatch.delenv(var, raising=False)
  nb = _load(name)
  client = nbclient.NotebookClient(
    nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute()  # raises CellExecutionError naming the failing cell
  for pattern in NOTEBOOKS[name]:
    assert glob.glob(str(tmp_path / pattern)), f"{name}.ipynb wrote no {pattern}"
