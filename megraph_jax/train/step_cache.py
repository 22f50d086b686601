"""Reuse of jitted steps within a process: a second run with the same settings (a sweep's seeds one after another, a
resumed run, a stage evaluated again) neither traces, lowers nor loads its steps again.

``jax.jit`` keeps its compiled programs per function object, and each run builds its steps anew; the persistent
compilation cache skips only XLA's compile, not tracing and lowering (~5 s for a ResNet-18 train step on a CPU core).
Entries are keyed by everything the step closes over, so equal keys give the same program.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable
from typing import Any

import jax
import numpy as np

SIZE = 8  # entries per cache: a run holds a train and an eval step per stage


class KeyedCache:
  """The values built for the last ``size`` hashable keys (the least recently used is dropped)."""

  def __init__(self, size: int = SIZE):
    self.size = size
    self._items: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
    self._lock = threading.Lock()

  def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
    """The value of ``key``, built by ``build()`` the first time (an exception is raised and nothing is kept)."""
    with self._lock:
      if key in self._items:
        self._items.move_to_end(key)
        return self._items[key]
    value = build()
    with self._lock:
      self._items[key] = value
      while len(self._items) > self.size:
        self._items.popitem(last=False)
    return value


def array_key(x: Any) -> tuple:
  """A hashable stand-in for an array's value (dtype, shape, bytes)."""
  a = np.asarray(x)
  return a.dtype.str, a.shape, a.tobytes()


def tree_key(tree: Any) -> tuple:
  """A hashable stand-in for a pytree of hashable leaves (e.g. shardings): its structure and leaves."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple(leaves)
