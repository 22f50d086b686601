"""The package layout's rules, read from the source: no module imports one above it, and TensorFlow is imported in
one place (``megraph_jax.optional.tensorflow``, which hides the GPUs from it)."""

import ast
import os

from helpers import REPO

PACKAGE = os.path.join(REPO, "megraph_jax")
# What each part may import (besides itself): the core is below everything, data/ below train/ and predict/,
# launch/ above train/, the app (AU Studio) above predict/: nothing imports it.
ALLOWED = {
  "core": {"core"},
  "data": {"core", "data"},
  "train": {"core", "data", "train"},
  "predict": {"core", "data", "predict"},
  "launch": {"core", "data", "train", "launch"},
  "app": {"core", "data", "predict", "app"},
}


def _part(module: str) -> str:
  """'core', 'data', 'train', 'predict', 'launch' or 'app' for a dotted module name under megraph_jax."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else "core"


def _modules():
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        rel = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
        yield rel.removesuffix(".__init__"), path


def _imports(path: str):
  """(imported module, line, under TYPE_CHECKING) for every import of a file."""
  tree = ast.parse(open(path).read(), path)
  type_checking = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
      type_checking.update(id(n) for n in ast.walk(node))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        yield a.name, node.lineno, id(node) in type_checking
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module, node.lineno, id(node) in type_checking
      for a in node.names:  # `from megraph_jax import train` imports the subpackage
        yield f"{node.module}.{a.name}", node.lineno, id(node) in type_checking


def test_no_module_imports_one_above_it():
  wrong = []
  for module, path in _modules():
    if module == "megraph_jax":  # the package's front door: `from megraph_jax import Predictor`, imported on use
      continue
    here = _part(module)
    for name, line, _ in _imports(path):
      if name.startswith("megraph_jax.") and name.split(".")[1] in ALLOWED and _part(name) not in ALLOWED[here]:
        wrong.append(f"{os.path.relpath(path, REPO)}:{line} ({here}) imports {name}")
      if name.startswith("data_pipelines"):
        wrong.append(f"{os.path.relpath(path, REPO)}:{line} imports the offline tools ({name})")
  assert not wrong, "\n".join(wrong)


def test_tensorflow_is_imported_only_by_optional():
  found = [
    f"{os.path.relpath(path, REPO)}:{line}"
    for module, path in _modules()
    for name, line, type_only in _imports(path)
    if name.split(".")[0] == "tensorflow" and not type_only and module != "megraph_jax.optional"
  ]
  assert not found, f"import TensorFlow through megraph_jax.optional.tensorflow() (it hides the GPUs): {found}"
  text = open(os.path.join(PACKAGE, "optional.py")).read()
  assert 'set_visible_devices([], "GPU")' in text


def test_the_checks_see_a_wrong_arrow(tmp_path):
  """The import reader finds an upward import (so the layout test can fail)."""
  p = tmp_path / "m.py"
  p.write_text("from megraph_jax.train import stage\nif TYPE_CHECKING:\n  import tensorflow as tf\n")
  got = list(_imports(str(p)))
  assert ("megraph_jax.train.stage", 1, False) in got and ("tensorflow", 3, True) in got
  assert _part("megraph_jax.train.stage") == "train" and "train" not in ALLOWED["core"]
