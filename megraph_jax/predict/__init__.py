"""Prediction: ``Predictor`` and its CLI (``python -m megraph_jax.predict``), the streaming pipeline, faces, media,
output records and pictures."""
