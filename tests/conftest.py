"""Fixtures (the tiny synthetic AU set, generated once per session) and process-wide test settings; helpers are in
``helpers.py``."""

import os
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Many tests train the same tiny models in fresh jit closures (and subprocesses): XLA's persistent
# compilation cache turns their repeated compilations into cache hits. Keyed by the HLO, the flags and
# the JAX version, so it never changes a result. Set before JAX is imported (subprocesses inherit it).
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"megraph-jax-tests-xla-cache-{os.getuid()}")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# TensorFlow, once loaded, makes a later `import triton` (pulled in by torchvision and torch._dynamo) segfault in
# this environment (tensorflow-cpu 2.21 with torch 2.14.1's triton); loaded the other way round both work. Many test
# modules load TensorFlow through the package, some use torchvision as a reference: load the references first.
try:
  import torchvision  # noqa: F401,E402
except ImportError:  # the torch extra is optional; the tests that need it skip or fail on their own
  pass

from helpers import TINY_AUS, TINY_SYNTHETIC  # noqa: E402  (after the cache settings above)


def pytest_configure(config):
  config.addinivalue_line(
    "markers", "precision(name): the float32 matmul precision the test needs (megraph_jax.numerics.PRECISIONS)"
  )


@pytest.fixture(autouse=True)
def _matmul_precision(request):
  """Parity tests state the precision they need (``pytestmark = pytest.mark.precision('highest')``): on CPU it is
  what XLA computes anyway; on GPU/TPU JAX's default (TF32 / bf16 passes) is ~1e-4 from the official model."""
  marker = request.node.get_closest_marker("precision")
  if marker is None:
    yield
    return
  from megraph_jax import numerics  # pylint: disable=import-outside-toplevel

  with numerics.compute_settings(precision=marker.args[0]):
    yield


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory) -> str:
  """Cache dir holding the tiny synthetic set (``tiny_config`` finds it there instead of regenerating)."""
  from megraph_jax.data import synthetic  # pylint: disable=import-outside-toplevel

  cache = str(tmp_path_factory.mktemp("synthetic_cache"))
  synthetic.ensure_generated(cache, name="BP4D", aus=[int(a[2:]) for a in TINY_AUS], **TINY_SYNTHETIC)
  return cache
