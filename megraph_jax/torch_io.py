"""Safe reading of PyTorch ``.pth`` files into NumPy (torch is an optional extra)."""

from __future__ import annotations

import os
import pickle
import re
from typing import Mapping

import numpy as np

from megraph_jax import optional
from megraph_jax.errors import CheckpointError, CheckpointNotFoundError

REFUSED = "not a plain tensor checkpoint"


def _refusal(path: str, e: Exception) -> str:
  """Why ``torch.load(weights_only=True)`` refused ``path``, in one line, without PyTorch's advice to load it with
  ``weights_only=False`` (which would run whatever code the pickle names)."""
  text = str(e)
  found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
  if found:
    why = f"it names Python code, {found.group(1)}, that unpickling would run"
  elif isinstance(e, pickle.UnpicklingError) or "weights_only" in text:
    why = "it holds Python objects other than tensors and plain containers"
  else:  # not a PyTorch file at all (a text file, a truncated zip, ...)
    first = text.splitlines()[0].strip() if text.strip() else ""
    why = f"torch.load cannot read it: {type(e).__name__}{' ' + first if first else ''}; truncated or another format?"
  return (
    f"{path}: {REFUSED} ({why}), so it will not be loaded: only tensors and plain containers are read (a "
    "state_dict saved with torch.save(model.state_dict(), path))"
  )


def load_pth(path: str | os.PathLike, *, unwrap: tuple[str, ...] = ("state_dict", "model")) -> dict[str, np.ndarray]:
  """Reads a ``.pth`` with ``torch.load(weights_only=True)`` and returns ``{key: float32/int array}``.

  A checkpoint that holds anything but tensors and plain containers (a pickle that would run
  code) is refused by torch's restricted unpickler, and nothing in it runs: a
  :class:`~megraph_jax.errors.CheckpointError` names the file (one line, exit status 2 of every command). A top-level
  ``{'state_dict': ...}`` or ``{'model': ...}`` wrapper is unwrapped and a ``module.`` prefix
  (DataParallel) stripped.
  """
  torch = optional.require("torch")
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointNotFoundError(f"{path}: no such checkpoint file")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle.UnpicklingError (a global outside the allow-list), or not a torch file at all
    raise CheckpointError(_refusal(path, e)) from None
  if isinstance(obj, Mapping):
    for k in unwrap:
      if k in obj and isinstance(obj[k], Mapping):
        obj = obj[k]
        break
  if not isinstance(obj, Mapping):
    raise CheckpointError(f"{path}: expected a state_dict mapping of tensors, got {type(obj).__name__}")
  out = {}
  for k, v in obj.items():
    if not hasattr(v, "detach"):
      continue  # e.g. an 'epoch' integer next to tensors
    k = k[len("module.") :] if k.startswith("module.") else k
    out[k] = v.detach().cpu().numpy()
  return out
