"""``python -m megraph_jax.app``: AU Studio (``megraph_jax.app.cli``)."""

import sys

from megraph_jax.app.cli import main

sys.exit(main())
