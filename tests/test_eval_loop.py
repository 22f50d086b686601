"""The evaluation loop with a fake model: padded, masked batches over the whole test split give scikit-learn's F1."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import tiny_config

from megraph_jax import sharding
from megraph_jax.data import datasets, input_pipeline
from megraph_jax.train import stage as train


class FixedScores(nnx.Module):
  """A fake model: AU probabilities are fixed functions of the image's channel means (no parameters to train)."""

  def __init__(self, num_aus: int):
    self.weights = nnx.Variable(jnp.linspace(-3.0, 3.0, 3 * num_aus).reshape(3, num_aus))

  def __call__(self, images):
    return {"au_probs": jnp.asarray(1.0) / (1.0 + jnp.exp(-(images.mean(axis=(1, 2)) @ self.weights[...])))}


@pytest.mark.parametrize("eval_batch_size", [5, 16, 64])  # padding in the last batch, exact, one padded batch
def test_evaluate_equals_sklearn_on_every_example(synthetic_cache, tmp_path, eval_batch_size):
  sk = pytest.importorskip("sklearn.metrics")
  config = tiny_config(synthetic_cache, eval_batch_size=eval_batch_size)
  data = datasets.from_config(config, str(tmp_path))
  test = data.split(1, "test")
  model = FixedScores(len(config.dataset.au_names))
  graphdef, state = nnx.split(model)
  mesh = sharding.make_mesh()
  p_eval = train.jit_eval_step(graphdef, jnp.ones(len(config.dataset.au_names)), mesh)
  result = train.evaluate(p_eval, state, test, root=data.root, config=config, mesh=mesh)

  # The reference: the same fake model on every test image, one at a time, scored by scikit-learn.
  ds = input_pipeline.create_eval_dataset(
    test, root=data.root, batch_size=1, image_size=config.dataset.image_size, crop_size=config.dataset.crop_size
  )
  probs, labels = [], []
  for b in ds.as_numpy_iterator():
    if b["mask"][0]:
      probs.append(np.asarray(model(jnp.asarray(b["image"]))["au_probs"])[0])
      labels.append(b["label"][0])
  probs, labels = np.stack(probs), np.stack(labels)
  assert len(labels) == len(test.paths) == result.num_examples
  for j, name in enumerate(config.dataset.au_names):
    want = sk.f1_score(labels[:, j], probs[:, j] >= 0.5, zero_division=0.0)
    assert result.f1[name] == pytest.approx(want, abs=1e-6), name
  assert result.mean_f1 == pytest.approx(np.mean(list(result.f1.values())), abs=1e-9)
