"""Accumulation dtype: float32 for float32/bfloat16 models, float64 for float64 ones (``jax_enable_x64``)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp


def acc_dtype(*dtypes: Any) -> Any:
  """The dtype of statistics, softmaxes and probabilities: at least float32, float64 if any input is float64."""
  return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)
