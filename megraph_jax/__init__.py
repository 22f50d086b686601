"""megraph-jax: ME-GraphAU in JAX/Flax NNX."""

__version__ = "0.1.0"


def __getattr__(name: str):
  """``megraph_jax.Predictor``, imported on first use (predict.py is a leaf nothing else imports)."""
  if name == "Predictor":
    from megraph_jax.predict.predictor import Predictor  # pylint: disable=import-outside-toplevel

    return Predictor
  raise AttributeError(f"module 'megraph_jax' has no attribute {name!r}")
