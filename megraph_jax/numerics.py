"""How the computation runs on the backend, decided here once: accumulation dtype, matmul precision, layouts.

Below every other module of the package (it imports only JAX), so the models, the losses, the jitted
steps, ``predict`` and the benchmarks all read the same three decisions:

- **Accumulation dtype** (:func:`acc_dtype`): statistics, softmaxes and probabilities in float32, float64
  for float64 models.
- **Matmul precision** (:data:`PRECISIONS`, ``config.model.precision``, ``predict --precision``): the
  precision of every float32 matmul and convolution traced under :func:`compute_settings`. ``'default'`` is
  JAX's (full float32 on CPU; TF32 / bf16 passes on GPU and TPU: fast, ~1e-4 from the official model);
  ``'high'`` (bf16x3); ``'highest'`` (full float32 everywhere: parity with the official code to ~1e-7).
- **Layouts** (:data:`LAYOUTS`, ``config.model.layout``): ``FlatLinear`` and ``PointwiseConv``
  (``models/layers.py``) run as 2-D matmuls where that pays, XLA:CPU (``benchmarks/layouts.py``: 2-7x faster
  backward passes), and as plain ``nnx.Linear`` / ``nnx.Conv`` on GPU and TPU, whose compilers want the
  plain ops (XLA:GPU's Triton GEMM fusion aborts on the strided-slice 1x1 conv). ``'auto'`` picks by the
  platform the step is traced for (the mesh's devices; ``jax.default_backend()`` without one) and logs the
  choice once per platform; ``'cpu'`` / ``'plain'`` force one. Both paths have the same parameters and the
  same numerics (``tests/test_numerics.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

PRECISIONS = ("default", "high", "highest")
LAYOUTS = ("auto", "cpu", "plain")

_SETTINGS: contextvars.ContextVar[tuple[str, str | None]] = contextvars.ContextVar("numerics", default=("auto", None))
_logged: set[tuple[str, str, bool]] = set()


def acc_dtype(*dtypes: Any) -> Any:
  """The dtype of statistics, softmaxes and probabilities: at least float32, float64 if any input is float64."""
  return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


def check(precision: str = "default", layout: str = "auto") -> None:
  """Raises ``ValueError`` naming the config key for an unknown precision or layout."""
  if precision not in PRECISIONS:
    raise ValueError(f"config key 'model.precision' = {precision!r}; choose one of {', '.join(PRECISIONS)}")
  if layout not in LAYOUTS:
    raise ValueError(f"config key 'model.layout' = {layout!r}; choose one of {', '.join(LAYOUTS)}")


def platform_of(mesh: Any = None) -> str:
  """The platform a step runs on: the mesh's devices' (a TPU topology's too, when compiling ahead of time)."""
  if mesh is not None:
    return mesh.devices.flat[0].platform
  return jax.default_backend()


@contextlib.contextmanager
def compute_settings(
  *, precision: str = "default", layout: str = "auto", platform: str | None = None
) -> Iterator[None]:
  """Traces what runs inside with this matmul precision and layout choice (for ``platform``; None: the default)."""
  check(precision, layout)
  token = _SETTINGS.set((layout, platform))
  try:
    if precision == "default":
      yield
    else:
      with jax.default_matmul_precision(precision):
        yield
  finally:
    _SETTINGS.reset(token)


def traced_with(fn: Callable, *, precision: str = "default", layout: str = "auto", platform: str | None = None):
  """``fn`` traced under :func:`compute_settings` (wrap it before ``jax.jit``: the settings hold at trace time)."""
  check(precision, layout)

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with compute_settings(precision=precision, layout=layout, platform=platform):
      return fn(*args, **kwargs)

  return wrapped


def cpu_layouts() -> bool:
  """Whether ``FlatLinear`` / ``PointwiseConv`` take their 2-D matmul form now (read at trace time)."""
  layout, platform = _SETTINGS.get()
  if layout != "auto":
    return layout == "cpu"
  platform = platform or jax.default_backend()
  use = platform == "cpu"
  if (layout, platform, use) not in _logged:
    _logged.add((layout, platform, use))
    logging.info(
      "layouts for %s: %s", platform, "2-D matmul 1x1 convs and Linears (XLA:CPU)" if use else "plain nnx.Conv/Linear"
    )
  return use
