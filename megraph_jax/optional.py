"""Optional dependencies, imported in one place: a missing one is an error that names the pip extra to install.

Everything else is imported at module top. Optional here means: PyTorch (reading ``.pth`` files; extra
``torch``), Ray (sweeps on a cluster; extra ``ray``), and the heavy detectors and codecs that only some
commands use (MTCNN and its TensorFlow graph, OpenCV), so that importing the package stays light.
"""

from __future__ import annotations

import functools
import importlib
import types

# top-level module -> (pip extra or package, what needs it)
EXTRAS = {
  "torch": ("pip install -e '.[torch]'", "reading PyTorch .pth files"),
  "ray": ("pip install -e '.[ray]'", "sweeps on a Ray cluster (--ray=...)"),
  "mtcnn": (
    "pip install mtcnn (a dependency of this package); for crops that are already aligned: predict --no-align / "
    "Predictor(align=False), align --aligner none",
    "face detection and alignment",
  ),
  "cv2": ("pip install opencv-python-headless (a dependency of this package)", "reading videos"),
  "starlette": ("pip install -e '.[app]'", "AU Studio (python -m megraph_jax.app)"),
  "uvicorn": ("pip install -e '.[app]'", "AU Studio (python -m megraph_jax.app)"),
  "python_multipart": ("pip install -e '.[app]'", "AU Studio's uploads (python -m megraph_jax.app)"),
  "tensorflow": ("pip install tensorflow-cpu (a dependency of this package)", "tf.data input and MTCNN face detection"),
}


class MissingDependencyError(ImportError):
  """An optional dependency a command needs is not installed; the message says how to install it."""

  def __init__(self, module: str, cause: BaseException):
    install, purpose = EXTRAS.get(module.split(".")[0], (f"pip install {module.split('.')[0]}", module))
    super().__init__(f"{purpose} needs {module.split('.')[0]}, which is not installed ({cause}): {install}")


def require(module: str) -> types.ModuleType:
  """``import module`` (e.g. 'torch', 'ray.util.tpu'), or a MissingDependencyError naming the extra."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    if isinstance(e, MissingDependencyError):
      raise
    raise MissingDependencyError(module, e) from e


@functools.cache
def tensorflow() -> types.ModuleType:
  """TensorFlow (tf.data input, MTCNN's graphs) with the GPUs hidden from it: the accelerators are JAX's. The one
  place TensorFlow is imported in the package, so its GPU hiding happens once, before anything initialises it."""
  tf = require("tensorflow")
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):
    pass  # already initialised by the caller (e.g. a notebook): keep its setting
  return tf
