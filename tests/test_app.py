"""AU Studio (``python -m megraph_jax.app``): the server's API and safety (Starlette's TestClient), and the whole app in
a real headless Chromium driven by Playwright: a photo and a short video in, the table, pictures and timeline shown,
the downloaded CSV equal to ``python -m megraph_jax.predict``'s on the same files."""

import contextlib
import csv
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("python_multipart")
from starlette.testclient import TestClient  # noqa: E402

from megraph_jax import loader  # noqa: E402
from megraph_jax.app import cli as app_cli  # noqa: E402
from megraph_jax.app.jobs import Studio, safe_name  # noqa: E402
from megraph_jax.app.server import create_app  # noqa: E402
from megraph_jax.data import synthetic_video  # noqa: E402
from megraph_jax.model_factory import ModelSpec, build  # noqa: E402
from megraph_jax.predict import predictor as predict  # noqa: E402
from megraph_jax.predict.plots import au_label  # noqa: E402

BP4D = ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [  # offline, quiet: no first-run pages, no updates, no background traffic
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--use-fake-device-for-media-stream",  # a test pattern as the webcam, allowed without asking
  "--use-fake-ui-for-media-stream",
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  spec = ModelSpec("resnet18", 12, 2, img_size=64, au_names=BP4D)
  return str(loader.save(build(spec), tmp_path_factory.mktemp("ckpt"), spec=spec))


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
  """A photo with a face, a 4-frame video of a face (both 320 x 240: one detector shape), a corrupt JPEG."""
  d = tmp_path_factory.mktemp("media")
  frame = next(synthetic_video.frames(1, width=320, height=240, face_size=130, seed=3))
  Image.fromarray(frame).save(d / "photo.png")
  pytest.importorskip("cv2")
  synthetic_video.write(d / "clip.mp4", 4, fps=10.0, width=320, height=240, face_size=130, seed=2)
  (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG at all")
  return d


@pytest.fixture(scope="module")
def studio(ckpt):
  """One Studio for the server tests: whole-image mode by default (no face detector: fast)."""
  defaults = predict.parser().parse_args(["--checkpoint", ckpt, "--no-align", "--batch-size", "4"])
  st = Studio(predict.cli_predictor(defaults), defaults)
  yield st
  st.close()
  assert not os.path.exists(st.root)  # uploads and results are removed when the app stops


@pytest.fixture(scope="module")
def client(studio):
  with TestClient(create_app(studio, max_upload=1 << 20), base_url="http://127.0.0.1") as c:
    yield c


def _upload(client, files, **options):
  """POST /api/jobs with ``files`` = [(browser file name, bytes)]."""
  return client.post(
    "/api/jobs",
    files=[("files", (name, data, "application/octet-stream")) for name, data in files],
    data={k: str(v) for k, v in options.items()},
  )


def _wait(client, job_id, timeout=120):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    u = client.get(f"/api/jobs/{job_id}").json()
    if u["status"] not in ("queued", "running"):
      return u
    time.sleep(0.1)
  raise AssertionError(f"job {job_id} still {u['status']} after {timeout} s")


def _cli(ckpt, folder, names, *flags, formats=("csv", "json")):
  """``python -m megraph_jax.predict`` run in ``folder`` on ``names`` (as AU Studio names its files): the CSV and
  JSON bytes and the picture names."""
  out, cwd = {}, os.getcwd()
  os.chdir(folder)
  try:
    for fmt in formats:
      path, pics = os.path.join(folder, f"cli.{fmt}"), os.path.join(folder, f"cli-pictures-{fmt}")
      plot = ["--plot", pics] if "pictures" not in out else []  # pictures once: they do not depend on the format
      assert predict.main(["--checkpoint", ckpt, *names, "-o", path, *plot, "--no-progress", *flags]) == 0
      with open(path, "rb") as f:
        out[fmt] = f.read()
      if plot:
        out["pictures"] = sorted(os.listdir(pics))
        shutil.rmtree(pics)
      os.remove(path)
  finally:
    os.chdir(cwd)
  return out


def test_browser_file_names_never_leave_the_upload_folder():
  assert safe_name("../../etc/x.jpg") == "etc/x.jpg"
  assert safe_name("..\\..\\windows\\x.jpg") == "windows/x.jpg"
  assert safe_name("/abs/path/photo.png") == "abs/path/photo.png"
  assert safe_name("holiday/./day 1/IMG 001.JPG") == "holiday/day 1/IMG 001.JPG"
  assert safe_name("..") == safe_name("") == safe_name("/") == "upload"
  assert safe_name(".hidden.png") == "hidden.png"
  assert safe_name("a\x00b<>|:*?.png") == "a_b_.png"
  assert safe_name("/".join(f"d{i}" for i in range(20)) + "/x.png").count("/") == 7  # at most 8 parts
  for name in ("../../etc/x.jpg", "....//....//x", "..\\x", "/etc/passwd", "~/.ssh/id_rsa", "a/../../b"):
    joined = os.path.realpath(os.path.join("/upload/root", safe_name(name)))
    assert joined.startswith("/upload/root/"), (name, joined)


def test_a_job_writes_what_the_cli_writes(client, studio, ckpt, media_dir, tmp_path):
  """Photo, corrupt file, a text file and a name that tries to climb out: rows stream, the error rows say why and the
  rest goes on; the CSV and JSON downloads are byte for byte the CLI's on the same files, the zip holds its pictures."""
  files = [
    ("../../etc/photo.png", (media_dir / "photo.png").read_bytes()),
    ("broken.jpg", (media_dir / "broken.jpg").read_bytes()),
    ("notes.txt", b"not a picture"),
    ("broken.jpg", b"GIF89a, or not"),  # the same name twice: kept apart
  ]
  r = _upload(client, files, whole_image=1, threshold=0.45)
  assert r.status_code == 201, r.text
  job_id, names = r.json()["id"], r.json()["files"]
  assert names == ["etc/photo.png", "broken.jpg", "notes.txt", "broken_2.jpg"]
  inputs = os.path.join(studio.root, f"job-{job_id}", "inputs")
  for n in names:
    assert os.path.realpath(os.path.join(inputs, n)).startswith(os.path.realpath(studio.root) + os.sep)
  u = _wait(client, job_id)
  assert u["status"] == "done", u
  assert [(r["file"], r["status"]) for r in u["rows"]] == [
    ("etc/photo.png", "ok"),
    ("broken.jpg", "error"),
    ("notes.txt", "error"),
    ("broken_2.jpg", "error"),
  ]
  assert u["rows"][1]["message"].startswith("broken.jpg: not a readable image")  # no server path in it
  assert u["rows"][0]["pictures"] == ["photo_face0_au.png", "photo_face0_graph.png"]
  assert u["progress"]["done"] == u["progress"]["total"] == 4 and u["counts"] == {"ok": 1, "error": 3}
  assert client.get(f"/api/jobs/{job_id}?since=3").json()["rows"] == u["rows"][3:]
  pic = client.get(f"/api/jobs/{job_id}/pictures/photo_face0_au.png")
  assert pic.status_code == 200 and Image.open(io.BytesIO(pic.content)).size[0] > 300

  folder = tmp_path / "same"
  shutil.copytree(inputs, folder)
  want = _cli(ckpt, folder, names, "--no-align", "--threshold", "0.45", "--batch-size", "4")
  got_csv = client.get(f"/api/jobs/{job_id}/download/predictions.csv")
  assert got_csv.headers["content-type"].startswith("text/csv")
  assert got_csv.content == want["csv"]
  assert client.get(f"/api/jobs/{job_id}/download/predictions.json").content == want["json"]
  with zipfile.ZipFile(io.BytesIO(client.get(f"/api/jobs/{job_id}/download/pictures.zip").content)) as z:
    assert z.namelist() == [f"pictures/{n}" for n in want["pictures"]]


def test_uploads_are_limited_and_checked(client):
  big = b"\0" * ((1 << 20) + 10)
  r = _upload(client, [("big.jpg", big)])
  assert r.status_code == 413 and "MB" in r.json()["error"]

  def chunks():  # no Content-Length: the limit holds while the body is read
    yield b"--xx\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\n\r\n"
    for _ in range(40):
      yield b"\0" * 65536

  r = client.post("/api/jobs", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xx"})
  assert r.status_code == 413
  assert _upload(client, []).status_code == 400  # no files
  r = _upload(client, [("a.png", b"x")], threshold="lots")
  assert r.status_code == 400 and "threshold" in r.json()["error"]
  assert _upload(client, [("a.png", b"x")], every=0).status_code == 400
  r = client.post("/api/jobs", files=[("files", ("a.png", b"x"))], headers={"origin": "http://evil.example"})
  assert r.status_code == 403  # a page of another site cannot start jobs
  assert client.get("/api/info", headers={"host": "evil.example:8765"}).status_code == 400  # DNS rebinding
  assert client.get("/api/jobs/999").status_code == 404
  assert client.get("/api/jobs/1/pictures/..%2Fpredictions.csv").status_code == 404
  assert client.get("/api/jobs/1/download/secrets.txt").status_code == 404


def test_a_second_upload_queues_and_a_queued_job_can_be_cancelled(client, studio, monkeypatch):
  gate, run = threading.Event(), studio.run

  def gated(job):
    gate.wait(60)
    run(job)

  monkeypatch.setattr(studio, "run", gated)
  unreadable = [("p.png", b"not a PNG")]  # quick jobs: one error row each
  first, second, third = (_upload(client, unreadable, whole_image=1).json()["id"] for _ in range(3))
  jobs = {j["id"]: j for j in client.get("/api/jobs").json()}
  assert jobs[second]["status"] == "queued" and jobs[third]["status"] == "queued"
  assert jobs[third]["queue_position"] == jobs[second]["queue_position"] + 1
  assert client.post(f"/api/jobs/{third}/cancel").json()["status"] == "cancelled"
  assert client.get(f"/api/jobs/{second}/download/predictions.csv").status_code == 409  # not done yet
  gate.set()
  assert _wait(client, first)["status"] == "done"
  assert _wait(client, second)["status"] == "done"
  assert [r["status"] for r in client.get(f"/api/jobs/{second}").json()["rows"]] == ["error"]
  assert client.get(f"/api/jobs/{third}").json()["rows"] == []


def test_the_command_line(ckpt, capsys):
  assert app_cli.is_local("127.0.0.1") and app_cli.is_local("::1") and app_cli.is_local("localhost")
  assert not app_cli.is_local("0.0.0.0") and not app_cli.is_local("192.168.1.5")
  with pytest.raises(SystemExit) as e:
    app_cli.main(["--checkpoint", ckpt, "--host", "0.0.0.0", "--no-browser"])
  assert e.value.code == 2 and "--allow-remote" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    app_cli.main(["--checkpoint", ckpt, "photo.jpg"])  # files come from the page
  missing = os.path.join(os.path.dirname(ckpt), "nothing-here")
  code = app_cli.main(["--checkpoint", missing, "--host", "0.0.0.0", "--allow-remote", "--port", "0", "--no-browser"])
  err = capsys.readouterr().err
  assert code == 2 and "WARNING" in err and "no password" in err.lower() and "nothing-here" in err


# ----------------------------------------------------------------------------- a real browser


def _chromium() -> str:
  """Debian's chromium; without it the test skips on a developer's machine and fails in CI (CI set)."""
  found = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
  if found is None:
    if os.environ.get("CI"):
      pytest.fail("no chromium in CI: apt-get install -y chromium (.ci/run does)")
    pytest.skip("no chromium (apt-get install chromium) for the browser test")
  return found


@contextlib.contextmanager
def _app(ckpt, tmp_path):
  """``python -m megraph_jax.app`` on a free local port, started at once; yields a function that waits for the
  address it prints."""
  log = open(tmp_path / "app.log", "w")  # noqa: SIM115
  proc = subprocess.Popen(
    [sys.executable, "-m", "megraph_jax.app", "--checkpoint", ckpt, "--port", "0", "--no-browser"],
    stdout=subprocess.PIPE,
    stderr=log,
    text=True,
    cwd=REPO,
  )

  def address() -> str:
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:\d+/", line)
    assert m, f"no address printed: {line!r}; log: {(tmp_path / 'app.log').read_text()}"
    return m.group(0)

  try:
    yield address
  finally:
    proc.terminate()
    proc.wait(30)
    log.close()
  root = re.search(r"uploads in (\S+)", (tmp_path / "app.log").read_text())
  assert root and not os.path.exists(root.group(1)), "the app left its uploads behind"


def test_in_a_real_browser(ckpt, media_dir, tmp_path):
  """Headless Chromium: upload a photo, a corrupt file and a video with faces, watch the results come, check the table,
  the pictures, the timeline and its frame marker, download the CSV and compare it with the CLI's, screenshot."""
  executable = _chromium()
  sync_api = pytest.importorskip("playwright.sync_api")
  folder = tmp_path / "inputs"
  folder.mkdir()
  names = ["photo.png", "broken.jpg", "clip.mp4"]
  for n in names:
    shutil.copy(media_dir / n, folder / n)
  with _app(ckpt, tmp_path) as address, sync_api.sync_playwright() as pw:
    # the CLI while the app starts: the app's first job then finds XLA's programs in the persistent compilation cache
    want = _cli(ckpt, folder, names, "--plot-every", "4", "--threshold", "0.4", formats=("csv",))
    url = address()
    browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
    try:
      page = browser.new_page(viewport={"width": 1100, "height": 900}, accept_downloads=True)
      page.goto(url)
      page.wait_for_selector("body[data-ready='1']")
      assert "12 AUs" in page.inner_text("#model")
      page.click("#cam-open")  # the webcam: a photo and a short recording join the files to analyse
      page.wait_for_function("document.querySelector('#cam-view').videoWidth > 0")
      page.click("#cam-snap")
      page.click("#cam-rec")
      page.wait_for_timeout(600)
      page.click("#cam-rec")
      page.wait_for_function("document.querySelectorAll('#pending li').length === 2")
      pending = page.inner_text("#pending")
      assert re.search(r"webcam-[\d-]+T[\d-]+\.png", pending) and re.search(r"webcam-[\d-]+T[\d-]+\.webm", pending)
      page.click("#cam-close")
      page.click("#pending li button")
      page.click("#pending li button")  # removed again: this test analyses the files below
      assert page.query_selector_all("#pending li") == [] and page.is_disabled("#go")
      page.set_input_files("#pick", [str(folder / n) for n in names])
      page.fill("#plot_every", "4")
      page.fill("#threshold", "0.4")
      page.click("#go")
      job = page.wait_for_selector("article.job")
      page.wait_for_selector("article.job[data-status='done']", timeout=150_000)
      rows = [[td.inner_text() for td in tr.query_selector_all("td")] for tr in job.query_selector_all("tbody tr")]
      cli_rows = list(csv.DictReader(io.StringIO(want["csv"].decode())))
      assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        (r["file"], r["frame"], r["face"], r["status"]) for r in cli_rows
      ]
      assert [float(r[2] or "nan") for r in rows] == pytest.approx(
        [float(r["time"] or "nan") for r in cli_rows], nan_ok=True
      )
      assert [r[4] for r in rows] == ["ok", "error"] + ["ok"] * 4
      assert "not a readable image" in rows[1][6]
      for shown, r in zip(rows, cli_rows):  # AUs present: named from the legend, as the CLI's *_occ columns say
        for au in BP4D:  # "AU1 Inner brow raiser", ...: no label is a prefix of another's
          assert (au_label(au) in shown[5]) == (r[f"{au}_occ"] == "1"), (au, shown, r)
      assert any(r[5] != "none" for r in rows if r[4] == "ok")
      assert "frames" in page.inner_text("article.job .rate")
      loaded = "el => el.complete && el.naturalWidth > 0"
      faces = job.query_selector_all(".faces img")
      assert len(faces) == 2 and all(img.evaluate(loaded) for img in faces)  # the photo's AU bars and graph
      timeline = job.wait_for_selector(".video img.timeline")
      page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=timeline)
      marker = job.query_selector(".video .marker")
      start = marker.bounding_box()
      job.query_selector(".video .scrub").evaluate("el => { el.value = 3; el.dispatchEvent(new Event('input')); }")
      assert marker.bounding_box()["x"] > start["x"] + 20 and "frame 3" in page.inner_text("article.job .frame-label")
      page.locator("article.job .frame-pictures").scroll_into_view_if_needed()  # the pictures load lazily
      pictured = "[...document.querySelectorAll('article.job .frame-pictures img')]"
      page.wait_for_function(f"{pictured}.length === 2 && {pictured}.every(el => el.complete && el.naturalWidth > 0)")
      assert "pictures of frame 0" in page.inner_text("article.job .frame-pictures")  # the nearest with pictures
      with page.expect_download() as download:
        page.click("article.job .downloads a.csv")
      got = download.value.path()
      with open(got, "rb") as f:
        assert f.read() == want["csv"]
      page.screenshot(path=str(tmp_path / "au_studio.png"), full_page=True)
      if os.environ.get("AU_STUDIO_SCREENSHOT"):  # the README's picture: AU_STUDIO_SCREENSHOT=docs/au_studio.png
        shot = Image.open(io.BytesIO(job.screenshot()))
        shot = shot.resize((shot.width * 3 // 5, shot.height * 3 // 5), Image.LANCZOS).quantize(96)
        shot.save(os.environ["AU_STUDIO_SCREENSHOT"], optimize=True)
    finally:
      browser.close()
  assert np.asarray(Image.open(tmp_path / "au_studio.png")).std() > 10
