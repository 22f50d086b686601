"""The train state: a model and its optimizer as one NNX graph (split once, one state tree, one checkpoint item)."""

from __future__ import annotations

import optax
from flax import nnx


class TrainState(nnx.Module):
  """The model and its optimizer as one graph: split once, one state tree, one sharding tree, one checkpoint item.

  ``nnx.split(TrainState(model, tx))`` gives ``{'model': ..., 'optimizer': {'opt_state', 'step'}}``; the model
  part alone is what evaluation, ``best/`` and the loader use.
  """

  def __init__(self, model: nnx.Module, tx: optax.GradientTransformation):
    self.model = model
    self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)  # AdamW state of the nnx.Param leaves
