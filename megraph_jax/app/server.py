"""AU Studio's web part: a small Starlette app serving one plain HTML/JS page (``static/``, no build step) and a JSON
API the page polls. The work itself is :mod:`megraph_jax.app.jobs`.

  GET  /                                  the page
  GET  /api/info                          the model's AUs (with their FACS names) and the default options
  POST /api/jobs                          multipart: ``files`` (one or more) and the options -> {"id": ...}
  GET  /api/jobs                          every job, with its status and place in the queue
  GET  /api/jobs/{id}?since=N             a job's progress, its rows from row N on, its timelines
  POST /api/jobs/{id}/cancel              stop a queued or running job
  GET  /api/jobs/{id}/pictures/{name}     a picture the CLI's --plot wrote
  GET  /api/jobs/{id}/timelines/{k}.png   a video's AU-over-time picture
  GET  /api/jobs/{id}/download/{name}     predictions.csv, predictions.json, pictures.zip (once the job is done)
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from megraph_jax.app.jobs import Job, OptionError, Studio, parse_options
from megraph_jax.predict import media
from megraph_jax.predict.plots import au_label

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
LOCAL_HOSTS = ("127.0.0.1", "localhost")
MAX_FILES = 10_000  # files in one upload (a folder's worth)
DOWNLOADS = {
  "predictions.csv": "text/csv",
  "predictions.json": "application/json",
  "pictures.zip": "application/zip",
}
PICTURE = re.compile(r"[\w.-]+\.png")


class UploadTooLarge(Exception):
  """More bytes arrived than the upload limit allows."""


def _limited(receive, limit: int):
  """``receive`` that raises :class:`UploadTooLarge` once the request body passes ``limit`` bytes (also without a
  Content-Length header), before it is all read."""
  seen = 0

  async def wrapped():
    nonlocal seen
    message = await receive()
    if message["type"] == "http.request":
      seen += len(message.get("body", b""))
      if seen > limit:
        raise UploadTooLarge()
    return message

  return wrapped


def _too_large(limit: int) -> JSONResponse:
  return JSONResponse({"error": f"upload larger than {limit / 2**20:g} MB (the app's --max-upload-mb)"}, 413)


def create_app(studio: Studio, *, max_upload: int = 2 << 30, allowed_hosts: tuple[str, ...] | None = LOCAL_HOSTS):
  """The Starlette app over ``studio``: uploads of at most ``max_upload`` bytes; requests whose Host header is not one
  of ``allowed_hosts`` (None: any) are refused, so that another web site cannot reach the app through DNS
  rebinding, and uploads from a page of another origin are refused."""

  def job_of(request: Request) -> Job:
    job = studio.jobs.get(request.path_params["job"])
    if job is None:
      raise HTTPException(404, "no such job")
    return job

  async def index(request: Request) -> Response:
    return FileResponse(os.path.join(STATIC, "index.html"))

  async def info(request: Request) -> Response:
    d, pr = studio.defaults, studio.predictor
    return JSONResponse(
      {
        "checkpoint": os.path.basename(os.path.normpath(d.checkpoint)),
        "au_names": pr.au_names,
        "au_labels": [au_label(a) for a in pr.au_names],
        "stage": pr.stage,
        "defaults": {
          "threshold": d.threshold,
          "every": d.every,
          "smooth": d.smooth,
          "plot_every": d.plot_every,
          "max_frames": d.max_frames,
          "whole_image": bool(d.no_align),
        },
        "max_upload_mb": max_upload / 2**20,
        "extensions": [*media.IMAGE_EXTS, *media.VIDEO_EXTS],  # what a folder is searched for, as the CLI does
      }
    )

  async def create_job(request: Request) -> Response:
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
      return JSONResponse({"error": "uploads come from AU Studio's own page only"}, 403)
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_upload:
      return _too_large(max_upload)
    limited = Request(request.scope, receive=_limited(request.receive, max_upload))
    try:
      form = await limited.form(max_files=MAX_FILES, max_fields=100)
    except UploadTooLarge:
      return _too_large(max_upload)
    except HTTPException as e:  # a malformed multipart body
      return JSONResponse({"error": e.detail}, 400)
    try:
      files = [v for k, v in form.multi_items() if k == "files" and isinstance(v, UploadFile)]
      if not files:
        return JSONResponse({"error": "no files in the upload (field 'files')"}, 400)
      fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
      try:
        options = parse_options(fields, studio.defaults)
      except OptionError as e:
        return JSONResponse({"error": str(e)}, 400)
      job = studio.new_job(options)
      for f in files:
        try:
          await run_in_threadpool(job.store, f.filename or "upload", f.file)
        except OSError as e:
          return JSONResponse({"error": f"{f.filename}: cannot be stored ({e.strerror or e})"}, 400)
      studio.submit(job)
      return JSONResponse({"id": job.id, "files": job.files}, 201)
    finally:
      await form.close()

  async def list_jobs(request: Request) -> Response:
    return JSONResponse([j.summary(studio.position(j)) for j in sorted(studio.jobs.values(), key=lambda j: j.id)])

  async def job_updates(request: Request) -> Response:
    job = job_of(request)
    try:
      since = max(0, int(request.query_params.get("since", 0)))
    except ValueError:
      since = 0
    return JSONResponse(studio.updates(job, since))

  async def cancel(request: Request) -> Response:
    job = job_of(request)
    studio.cancel(job)
    return JSONResponse(job.summary(studio.position(job)))

  async def picture(request: Request) -> Response:
    job, name = job_of(request), request.path_params["name"]
    path = os.path.join(job.pictures, name)
    if not PICTURE.fullmatch(name) or not os.path.isfile(path):
      raise HTTPException(404, "no such picture")
    return FileResponse(path, media_type="image/png")

  async def timeline(request: Request) -> Response:
    job = job_of(request)
    path = os.path.join(job.folder, "timelines", f"{request.path_params['index']}.png")
    if not os.path.isfile(path):
      raise HTTPException(404, "no such timeline")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-store"})

  async def download(request: Request) -> Response:
    job, name = job_of(request), request.path_params["name"]
    if name not in DOWNLOADS:
      raise HTTPException(404, "downloads: " + ", ".join(DOWNLOADS))
    if job.status != "done":
      return JSONResponse({"error": f"job {job.id} is {job.status}; downloads come when it is done"}, 409)
    return FileResponse(job.path(name), media_type=DOWNLOADS[name], filename=f"au-studio-job{job.id}-{name}")

  routes = [
    Route("/", index),
    Route("/api/info", info),
    Route("/api/jobs", list_jobs, methods=["GET"]),
    Route("/api/jobs", create_job, methods=["POST"]),
    Route("/api/jobs/{job:int}", job_updates),
    Route("/api/jobs/{job:int}/cancel", cancel, methods=["POST"]),
    Route("/api/jobs/{job:int}/pictures/{name}", picture),
    Route("/api/jobs/{job:int}/timelines/{index:int}.png", timeline),
    Route("/api/jobs/{job:int}/download/{name}", download),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
  ]
  middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))] if allowed_hosts else []

  async def http_error(request: Request, exc: Any) -> Response:
    return JSONResponse({"error": exc.detail}, exc.status_code)

  return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error})
