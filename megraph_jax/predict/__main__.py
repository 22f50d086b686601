"""``python -m megraph_jax.predict``: the CLI of ``megraph_jax.predict.predictor``."""

import sys

from megraph_jax.predict.predictor import main

sys.exit(main())
