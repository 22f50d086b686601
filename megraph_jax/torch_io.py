"""Safe reading of PyTorch ``.pth`` files into NumPy (torch is an optional extra)."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from megraph_jax import optional


def load_pth(path: str | os.PathLike, *, unwrap: tuple[str, ...] = ("state_dict", "model")) -> dict[str, np.ndarray]:
  """Reads a ``.pth`` with ``torch.load(weights_only=True)`` and returns ``{key: float32/int array}``.

  A checkpoint that holds anything but tensors and plain containers (a pickle that would run
  code) is refused by torch's restricted unpickler; the error names the file. A top-level
  ``{'state_dict': ...}`` or ``{'model': ...}`` wrapper is unwrapped and a ``module.`` prefix
  (DataParallel) stripped.
  """
  torch = optional.require("torch")
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle.UnpicklingError and friends
    raise ValueError(
      f"{path}: refused to load: not a plain tensor checkpoint readable with "
      f"torch.load(weights_only=True) ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    ) from e
  if isinstance(obj, Mapping):
    for k in unwrap:
      if k in obj and isinstance(obj[k], Mapping):
        obj = obj[k]
        break
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a state_dict mapping, got {type(obj).__name__}")
  out = {}
  for k, v in obj.items():
    if not hasattr(v, "detach"):
      continue  # e.g. an 'epoch' integer next to tensors
    k = k[len("module.") :] if k.startswith("module.") else k
    out[k] = v.detach().cpu().numpy()
  return out
