"""``python -m megraph_jax.app --checkpoint CKPT``: starts AU Studio on http://127.0.0.1:8765/ (the next free port
when that one is taken) and opens it in the browser.

Every option of ``python -m megraph_jax.predict`` (``--checkpoint`` required; ``--batch-size``, ``--detector``,
``--backbone``, ...) is passed on to the predictor; ``--threshold``, ``--every``, ``--smooth``, ``--plot-every``,
``--max-frames`` and ``--no-align`` become the page's default options, which each upload may change.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import socket
import sys
import webbrowser
from collections.abc import Sequence

from megraph_jax import optional
from megraph_jax.errors import UserError
from megraph_jax.predict import predictor as predict

DEFAULT_PORT = 8765
DEPENDENCIES = ("starlette", "uvicorn", "python_multipart")  # the extra ``.[app]`` (megraph_jax.optional names it)


def parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(
    prog="python -m megraph_jax.app",
    description="AU Studio: facial action units of your photos and videos, in the browser, on this computer.",
    epilog=__doc__.split("\n\n", 1)[1].replace("``", ""),
  )
  ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
  ap.add_argument("--port", type=int, default=None, help=f"default {DEFAULT_PORT}, or a free one; 0: any free port")
  ap.add_argument(
    "--allow-remote",
    action="store_true",
    help="allow a --host other than this computer: anyone who can reach it can upload files and see the results",
  )
  ap.add_argument("--max-upload-mb", type=float, default=2048, help="largest upload, in MB (default 2048)")
  ap.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
  return ap


def is_local(host: str) -> bool:
  """Whether ``host`` is a loopback address (or ``localhost``)."""
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def bind(host: str, port: int | None) -> socket.socket:
  """A listening socket on ``host``: ``port``, or :data:`DEFAULT_PORT` and the ones after it, else any free port."""
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  candidates = [port] if port is not None else [*range(DEFAULT_PORT, DEFAULT_PORT + 10), 0]
  for i, p in enumerate(candidates):
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
      sock.bind((host, p))
    except OSError as e:
      sock.close()
      if i == len(candidates) - 1:
        raise UserError(f"cannot listen on {host}:{p} ({e.strerror or e}); give another --port") from e
      continue
    sock.listen(128)
    return sock
  raise AssertionError("unreachable")


def main(argv: Sequence[str] | None = None) -> int:
  """Starts the app and serves until Ctrl-C. Exit status 2 (an ``error:`` line) for a bad checkpoint or option, a
  missing ``.[app]`` extra, a non-local ``--host`` without ``--allow-remote``, or a port that cannot be used."""
  ap = parser()
  args, rest = ap.parse_known_args(argv)
  cli = predict.parser()
  cli.prog = f"{ap.prog} (options passed on to python -m megraph_jax.predict)"
  defaults = cli.parse_args(rest)
  if defaults.inputs or defaults.camera is not None:
    ap.error("files come from the page: give no inputs or --camera on the command line")
  if defaults.output != "-" or defaults.plot or defaults.format:
    ap.error("--output, --format and --plot are the page's downloads; leave them out")
  if not is_local(args.host) and not args.allow_remote:
    ap.error(f"--host {args.host} is not this computer: add --allow-remote to let other machines reach the app")
  try:
    for module in DEPENDENCIES:
      optional.require(module)
  except optional.MissingDependencyError as e:
    print(f"au-studio: error: {e}", file=sys.stderr)
    return 2
  # the web part only now: the check above names the extra when it is missing
  import uvicorn  # pylint: disable=import-outside-toplevel

  from megraph_jax.app.jobs import Studio  # pylint: disable=import-outside-toplevel
  from megraph_jax.app.server import create_app  # pylint: disable=import-outside-toplevel

  if not is_local(args.host):
    print(
      f"au-studio: WARNING: --host {args.host} is not only this computer: anyone who can reach it can upload files "
      "to AU Studio and see every result. There is no password.",
      file=sys.stderr,
      flush=True,
    )
  sock = None
  try:
    sock = bind(args.host, args.port)
    print(f"au-studio: loading {defaults.checkpoint} ...", file=sys.stderr, flush=True)
    predictor = predict.cli_predictor(defaults)
  except UserError as e:
    if sock is not None:
      sock.close()
    print(f"au-studio: error: {e}", file=sys.stderr)
    return e.exit_status
  studio = Studio(predictor, defaults)
  print(f"au-studio: uploads in {studio.root} (removed when the app stops)", file=sys.stderr, flush=True)
  host, port = sock.getsockname()[:2]
  url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
  # the Host header check: off for a remote bind (any name may reach it) and for IPv6 literals ("[::1]:8765", which
  # Starlette's check cannot parse)
  allowed = None if args.allow_remote or ":" in host else (host, "localhost")
  app = create_app(studio, max_upload=int(args.max_upload_mb * 2**20), allowed_hosts=allowed)
  server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
  print(f"AU Studio is running at {url}  (open it in your browser; Ctrl-C stops it)", flush=True)
  if not args.no_browser:
    webbrowser.open(url)
  # uvicorn re-raises the SIGTERM it caught once it has stopped; as SystemExit here, not the default handler's
  # immediate exit, so that the finally below still removes the uploads
  signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
  try:
    server.run(sockets=[sock])
  finally:
    studio.close()  # uploads and results are removed
  return 0
