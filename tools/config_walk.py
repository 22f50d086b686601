"""How far a reader walks to follow one value through the code: the config from ``main.py`` through one training
stage, or a checkpoint path from ``Predictor.from_checkpoint`` to the loaded model.

  python tools/config_walk.py            # both walks on the tiny synthetic run (~1 min on 2 CPU cores)
  python tools/config_walk.py -v         # ... and every stop, in order

Method (reproducible, no judgement involved): a ``sys.setprofile`` hook records every call of a Python function of
this repository (``megraph_jax.*``, ``main``; comprehensions and lambdas left out) that *receives the value* in
one of its arguments: for the config, the run's ``ConfigDict`` or any of its sub-dicts (``config.dataset``, ...);
for the checkpoint, a string naming the checkpoint's folder or a path inside it. The walk is the list of those
functions in the order of their first call (a reader reads each once). It reports

* stops: the functions of the walk;
* modules: the distinct modules they are in;
* returns: the stops at which the walk enters a module it had already left (``a -> b -> a`` is one return).

The config walk runs ``main.main`` in this process on the tests' tiny synthetic set (ResNet-18 at 32 px, BP4D's 12 AUs,
``mode=stage1``, one epoch of 4 steps) in a temporary workdir; the checkpoint walk then loads that run's stage
directory with ``Predictor.from_checkpoint``. The walks go to stdout, the run's own log and table to stderr/stdout
before them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


class Walk:
  """The first call, in order, of every repository function whose arguments hold a value ``matches`` accepts."""

  def __init__(self, matches: Callable[[Any], bool]):
    self.matches = matches
    self.stops: list[tuple[str, str]] = []  # (module, qualified function name)
    self._seen: set[types.CodeType] = set()

  def _profile(self, frame: types.FrameType, event: str, _arg: Any) -> None:
    if event != "call":
      return
    code = frame.f_code
    if code in self._seen or code.co_name.startswith("<"):
      return
    module = frame.f_globals.get("__name__", "")
    if not (module.startswith("megraph_jax") or module in ("main", "__main__")):
      return
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    values = [frame.f_locals.get(n) for n in names]
    if code.co_flags & 0x04:  # *args
      values += list(frame.f_locals.get(code.co_varnames[len(names)], ()))
    if code.co_flags & 0x08:  # **kwargs
      kwargs = code.co_varnames[len(names) + bool(code.co_flags & 0x04)]
      values += list((frame.f_locals.get(kwargs) or {}).values())
    if any(self._accepts(v) for v in values):
      self._seen.add(code)
      self.stops.append(("main" if module == "__main__" else module, code.co_qualname))

  def _accepts(self, value: Any) -> bool:
    try:
      return bool(self.matches(value))
    except Exception:  # pylint: disable=broad-except  # a value that cannot be compared: not the one followed
      return False

  def __enter__(self) -> Walk:
    sys.setprofile(self._profile)
    return self

  def __exit__(self, *exc) -> None:
    sys.setprofile(None)

  def figures(self) -> dict[str, int]:
    """{'stops', 'modules', 'returns'} of the walk."""
    returns, left, current = 0, set(), None
    for module, _ in self.stops:
      if module != current:
        if module in left:
          returns += 1
        if current is not None:
          left.add(current)
        current = module
    return {"stops": len(self.stops), "modules": len({m for m, _ in self.stops}), "returns": returns}

  def report(self, title: str, verbose: bool) -> str:
    f = self.figures()
    lines = [f"{title}: {f['stops']} stops in {f['modules']} modules with {f['returns']} returns"]
    if verbose:
      lines += [f"  {module}.{name}" for module, name in self.stops]
    return "\n".join(lines)


def config_nodes(config) -> list[Any]:
  """The config and every ConfigDict below it."""
  import ml_collections  # pylint: disable=import-outside-toplevel

  out, todo = [], [config]
  while todo:
    node = todo.pop()
    out.append(node)
    todo += [v for v in node.values() if isinstance(v, ml_collections.ConfigDict)]
  return out


def tiny_args(workdir: str, cache_dir: str) -> list[str]:
  """``main.py`` arguments of the tests' tiny synthetic run (``tests/helpers.tiny_main_args``), one stage, one epoch."""
  return [
    "main.py",
    "--config=" + os.path.join(REPO, "configs", "synthetic.py"),
    f"--workdir={workdir}",
    f"--config.dataset.synthetic.cache_dir={cache_dir}",
    "--config.dataset.synthetic.num_subjects=3",
    "--config.dataset.synthetic.frames_per_subject=16",
    "--config.dataset.synthetic.image_size=40",
    "--config.dataset.image_size=36",
    "--config.dataset.crop_size=32",
    "--config.batch_size=8",
    "--config.eval_batch_size=8",
    "--config.stage1.epochs=1",
    "--config.log_every_steps=2",
    "--config.mode=stage1",
  ]


def config_walk(workdir: str, cache_dir: str) -> Walk:
  """Runs ``main.main`` (one stage) with the profile hook on; the walk of its config."""
  import main  # pylint: disable=import-outside-toplevel

  sys.argv = tiny_args(workdir, cache_dir)  # ml_collections reads --config.<key> overrides from sys.argv
  argv = main.parse_flags(sys.argv)
  nodes = config_nodes(main.FLAGS.config)
  ids = {id(n) for n in nodes}
  with Walk(lambda v: id(v) in ids) as walk:
    main.main(argv)
  return walk


def checkpoint_walk(stage_dir: str) -> Walk:
  """``Predictor.from_checkpoint(stage_dir)`` with the profile hook on; the walk of the path."""
  from megraph_jax.predict.predictor import Predictor  # pylint: disable=import-outside-toplevel

  top = os.path.abspath(stage_dir)

  def inside(v: Any) -> bool:
    return isinstance(v, (str, os.PathLike)) and os.path.abspath(os.fspath(v)).startswith(top)

  with Walk(inside) as walk:
    Predictor.from_checkpoint(stage_dir)
  return walk


def main_(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("-v", "--verbose", action="store_true", help="print every stop")
  a = p.parse_args(argv)
  os.chdir(REPO)
  with tempfile.TemporaryDirectory() as tmp:
    workdir, cache = os.path.join(tmp, "work"), os.path.join(tmp, "data")
    walk = config_walk(workdir, cache)
    print(walk.report("config from main.py through one stage", a.verbose), flush=True)
    walk = checkpoint_walk(os.path.join(workdir, "fold1", "stage1"))
    print(walk.report("checkpoint path from Predictor.from_checkpoint", a.verbose), flush=True)


if __name__ == "__main__":
  main_()
