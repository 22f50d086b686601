"""AU Studio: ``python -m megraph_jax.app --checkpoint CKPT``, a local web app over :class:`megraph_jax.Predictor` for
people who do not write code (``cli.py``: start-up, ``server.py``: the page and its API, ``jobs.py``: the work).
An entry point: nothing in the library imports it. Needs the extra ``pip install -e '.[app]'``."""
