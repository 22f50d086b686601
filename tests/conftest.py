"""Fixtures (the tiny synthetic AU set, generated once per session) and process-wide test settings; helpers are in
``helpers.py``."""

import importlib.util
import math
import os
import re
import shutil
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
# Bounded (least recently used entries go first): on a machine that keeps /tmp, runs of changing code would otherwise
# add to it without end. One cold run of the suite writes about 70 MB.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(1 << 30))
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

# ------------------------------------------------------------------------ CI: no skip for a missing required package
# ``pytest.importorskip`` lets a machine without an optional package run the rest, but in CI a broken install would
# turn whole files into skips. With the environment variable CI set, a skip whose reason names a module of a required
# package that is not importable is a failure. Required: the packages of MEGRAPH_TEST_REQUIREMENTS (requirement files
# or package names, comma-separated; default requirements-test.txt, which includes requirements.txt).
IMPORT_NAMES = {  # distribution -> import name, where they differ
  "scikit-learn": "sklearn",
  "scikit-image": "skimage",
  "opencv-python-headless": "cv2",
  "opencv-python": "cv2",
  "tensorflow-cpu": "tensorflow",
  "tensorflow-datasets": "tensorflow_datasets",
  "absl-py": "absl",
  "pillow": "PIL",
  "orbax-checkpoint": "orbax",
  "apache-beam": "apache_beam",
  "protobuf": "google.protobuf",
  "pytest-xdist": "xdist",
}


def required_modules(spec: str) -> set[str]:
  """Top-level import names of the packages named by ``spec`` (requirement files, followed through ``-r``, or names)."""
  names: set[str] = set()

  def read(path: str) -> None:
    with open(path) as f:
      for line in f:
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
          read(os.path.join(os.path.dirname(path), line[2:].strip()))
        elif line and not line.startswith("-"):
          names.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0])

  for entry in filter(None, (e.strip() for e in spec.split(","))):
    path = entry if os.path.isabs(entry) else os.path.join(REPO, entry)
    if os.path.isfile(path):
      read(path)
    else:
      names.add(entry)
  return {IMPORT_NAMES.get(n.lower(), n.lower().replace("-", "_")).split(".")[0] for n in names}


def missing_required(reason: str, required: set[str]) -> list[str]:
  """Modules of ``required`` that ``reason`` names (e.g. "No module named 'torch'", "could not import
  'skimage.data'", "needs libtpu") and that cannot be imported here."""
  named = {w.split(".")[0] for w in re.findall(r"[A-Za-z_][\w.]*", reason)}
  return sorted(m for m in named & required if importlib.util.find_spec(m) is None)


def _skip_reason(report) -> str:
  longrepr = report.longrepr
  return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _fail_if_required_missing(report) -> None:
  if not os.environ.get("CI") or not report.skipped:
    return
  spec = os.environ.get("MEGRAPH_TEST_REQUIREMENTS", "requirements-test.txt")
  reason = _skip_reason(report)
  missing = missing_required(reason, required_modules(spec))
  if missing:
    report.outcome = "failed"
    report.longrepr = (
      f"skipped for a required package that does not import ({', '.join(missing)}; CI is set): {reason}\n"
      f"install what {spec} names instead of skipping"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
  outcome = yield
  _fail_if_required_missing(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):  # pylint: disable=unused-argument
  outcome = yield  # a module-level importorskip skips the whole file here
  _fail_if_required_missing(outcome.get_result())


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


@pytest.fixture(scope="session", autouse=True)
def _ray_temp_dir():
  """Local Ray clusters started by the tests (subprocesses: ``tests/sweep_files.sweep_env`` passes RAY_TMPDIR on)
  keep their session folders (logs, sockets) here, removed at the end, instead of in /tmp/ray, where they stay. Short:
  Ray's socket paths must fit in 107 bytes."""
  path = tempfile.mkdtemp(prefix="megraph-ray-")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("RAY_TMPDIR", path)
    yield path
  shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory) -> str:
  """Cache dir holding the tiny synthetic set (``tiny_config`` finds it there instead of regenerating)."""
  from megraph_jax.data import synthetic  # pylint: disable=import-outside-toplevel

  cache = str(tmp_path_factory.mktemp("synthetic_cache"))
  synthetic.ensure_generated(cache, name="BP4D", aus=[int(a[2:]) for a in TINY_AUS], **TINY_SYNTHETIC)
  return cache


@pytest.fixture(scope="session")
def tiny_train_run(tmp_path_factory, synthetic_cache):
  """Mode 'train' of ``helpers.tiny_config`` (stage 1: 2 epochs x 4 steps, stage 2 from its last epoch: 1 epoch) in
  a fresh workdir, trained once per session for every file that needs a finished run: (workdir, config, RunResult).
  Shared: read it, or copy the workdir (shutil.copytree) to change it."""
  from helpers import tiny_config  # pylint: disable=import-outside-toplevel

  from megraph_jax.train.experiment import run  # pylint: disable=import-outside-toplevel

  workdir = str(tmp_path_factory.mktemp("tiny_train"))
  config = tiny_config(synthetic_cache, mode="train")
  return workdir, config, run(config, workdir)


@pytest.fixture(scope="session")
def float64_one_device(tmp_path_factory, synthetic_cache):
  """The 1-device float64 stage-2 run (``helpers.float64_stage2_run``) that tests/test_sharding.py (8 devices) and
  tests/test_multiprocess.py (2 processes) compare with: (info, {name: array}), trained once per session."""
  from helpers import float64_stage2_run  # pylint: disable=import-outside-toplevel

  root = tmp_path_factory.mktemp("float64_one_device")
  one, params = float64_stage2_run(1, root, synthetic_cache)
  shutil.rmtree(root, ignore_errors=True)  # its checkpoints (~0.3 GB): what the tests compare is in memory
  assert len(one["losses"]) == 4 and all(math.isfinite(x) for x in one["losses"]), one
  return one, params


# ------------------------------------------------------------------------------------ two workers (pytest -n 2)
# CI runs the suite on two workers (pytest-xdist): much of it is single-threaded (XLA compiling, Python, subprocess
# start-up), so the second core was idle. A worker takes whole files, so module and session fixtures are built once
# per worker; files that share an expensive session fixture or a Ray cluster form one unit (SHARED), and the longest
# units are handed out first (LONGEST, measured) so that neither worker is left with a long file at the end.
SHARED = {  # file -> unit: the float64 1-device reference (conftest) and the local Ray clusters; the tiny train run
  "test_sharding.py": "float64-and-ray",
  "test_multiprocess.py": "float64-and-ray",
  "test_ray_sweep.py": "float64-and-ray",
  "test_train.py": "tiny-train-run",
  "test_resume.py": "tiny-train-run",
}
LONGEST = (  # units by their time in one serial run (2 cores, loaded: 3,640 s in all), the longest first
  "float64-and-ray",  # 660 s
  "tiny-train-run",  # 540 s
  "test_device_check.py",  # 410 s
  "test_opengraphau_finetune.py",
  "test_notebooks.py",
  "test_train_safety.py",
  "test_opengraphau.py",
  "test_predict_video.py",
  "test_sweep.py",  # 87 s; the rest under 80 s each (test_models, _remat, _loader, _bfloat16, _numerics: jitted
  # since, each under 60 s cold), in the order collected
)


def _unit(nodeid: str) -> str:
  path = nodeid.split("::", 1)[0]
  return SHARED.get(os.path.basename(path), path)


def _rank(nodeid: str) -> int:
  name = os.path.basename(_unit(nodeid))
  return LONGEST.index(name) if name in LONGEST else len(LONGEST)


def pytest_collection_modifyitems(items):
  """Longest units first (a stable sort: the order within a unit stays)."""
  items.sort(key=lambda item: _rank(item.nodeid))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """Whole files to a worker (SHARED files together), in the order collected (longest first)."""
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=import-outside-toplevel

  class FileUnits(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
      return _unit(nodeid)

  config.option.loadscopereorder = False
  return FileUnits(config, log)
