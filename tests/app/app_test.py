"""The web app: gradio_client API calls (everywhere) and a real headless Chromium (where Debian's `chromium` and
`chromium-driver` are installed; skipped with that reason elsewhere). The app runs on 127.0.0.1 with random
weights, the small stand-in portrait network (tests/infer/tiny_net.py) and short clips (max_frames)."""
import os
import pathlib
import shutil
import socket
import tempfile
import time

import numpy as np
import pytest

from r3p import app, video
from tests.conftest import shared_path
from tests.infer.tiny_net import tiny_portrait

MAX_FRAMES = 8
ARTIFACTS = pathlib.Path(os.environ.get("R3P_TEST_ARTIFACTS", pathlib.Path(tempfile.gettempdir()) / "r3p_test_artifacts"))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def assets():
  return {"src": shared_path("assets", "examples", "Macron.png"),
          "aud": shared_path("assets", "examples", "Obama_5s.wav"),
          "mp": shared_path("assets", "mediapipe", "face_landmarker.task").parent}


class _Recorder:
  """The portrait, with a record of the render events its `animate` generators yielded and whether one was closed
  before its end (a cancelled job)."""

  def __init__(self, portrait):
    self._p = portrait
    self.rendered, self.closed_early = [], 0

  def __getattr__(self, name):
    return getattr(self._p, name)

  def animate(self, *a, **kw):
    gen = self._p.animate(*a, **kw)
    try:
      for ev in gen:
        if ev.stage == "render":
          self.rendered.append((ev.done, ev.total))
        yield ev
    except GeneratorExit:
      self.closed_early += 1
      raise
    finally:
      gen.close()


@pytest.fixture(scope="module")
def server(assets, tmp_path_factory):
  portrait = tiny_portrait(assets["mp"])
  work = tmp_path_factory.mktemp("app_jobs")
  demo = app.build_app(portrait, max_frames=MAX_FRAMES, max_seconds=30, workdir=str(work))
  port = _free_port()
  _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
  yield {"url": url, "portrait": portrait, "work": work}
  demo.close()


@pytest.fixture(scope="module")
def long_server(server, assets, tmp_path_factory):
  """The same portrait with whole clips (the 5-s audio: 125 frames) in chunks of 4 frames: a job long enough to be
  cancelled mid-way."""
  rec = _Recorder(server["portrait"])
  work = tmp_path_factory.mktemp("app_jobs_long")
  demo = app.build_app(rec, max_seconds=30, chunk=4, workdir=str(work))
  _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
  yield {"url": url, "rec": rec, "work": work}
  demo.close()


def _leftovers(folder):
  return sorted(str(p.relative_to(folder)) for p in pathlib.Path(folder).rglob("*"))


def _video_path(v):
  return v["video"] if isinstance(v, dict) else v


def _predict(url, src, aud, seed=42):
  from gradio_client import Client, handle_file
  c = Client(url, verbose=False)
  return c.predict(handle_file(str(src)) if src else None, handle_file(str(aud)) if aud else None, None, None, "period", 0.45, 0.2,
                   0.9, True, "final", seed, api_name="/generate")


def test_api_generate_then_reuse_planes(server, assets):
  p = server["portrait"]
  calls = p.network.source_calls
  times = []
  for _ in range(2):
    t = time.perf_counter()
    vid, preview, status = _predict(server["url"], assets["src"], assets["aud"])
    times.append(time.perf_counter() - t)
    assert vid is not None, status
    info = video.probe(_video_path(vid))
    assert info["video_frames"] == MAX_FRAMES and info["has_audio"], info
    assert "Done" in status
  assert p.network.source_calls == calls + 1  # the second request reused the canonical planes
  assert "reused" in status
  assert _leftovers(server["work"]) == []  # the job folders are gone (Gradio keeps its own copy of the result)
  print(f"app request: first {times[0]:.1f} s, second (cached planes) {times[1]:.1f} s")


def _bad_inputs(tmp_path, assets):
  """Issue 11 section 3: (case, source, audio, words of the expected message)."""
  import cv2
  import soundfile as sf
  (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
  (tmp_path / "empty.png").write_bytes(b"")
  (tmp_path / "empty.wav").write_bytes(b"")
  (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage" * 10)
  (tmp_path / "notes.txt").write_text("not audio")
  (tmp_path / "audio.xyz").write_bytes(b"abc" * 100)
  cv2.imwrite(str(tmp_path / "noface.png"), np.full((256, 256, 3), 128, np.uint8))
  sf.write(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
  src, aud = assets["src"], assets["aud"]
  return [("no face", tmp_path / "noface.png", aud, "no face"),
          ("corrupt image", tmp_path / "corrupt.png", aud, "cannot decode"),
          ("empty image", tmp_path / "empty.png", aud, "cannot decode"),
          ("empty audio", src, tmp_path / "empty.wav", "empty file"),
          ("corrupt audio", src, tmp_path / "corrupt.wav", "not a readable audio file"),
          ("silent audio", src, tmp_path / "silent.wav", "silent"),
          ("unsupported audio format", src, tmp_path / "notes.txt", "unsupported format .txt"),
          ("unknown audio format", src, tmp_path / "audio.xyz", "unsupported format .xyz"),
          ("no audio", src, None, "driving audio"),
          ("no portrait", None, aud, "source portrait")]


def _still_serving(url):
  """A request through the queue and the callback (the no-portrait message comes back at once)."""
  vid, _, status = _predict(url, None, None)
  assert vid is None and "source portrait" in status, status


def test_api_bad_files_then_still_serving(server, assets, tmp_path):
  for case, src, aud, words in _bad_inputs(tmp_path, assets):
    vid, _, status = _predict(server["url"], src, aud)
    assert vid is None and status.startswith("**Error:**") and words in status, (case, status)
    assert "/gradio/" not in status, status  # the user's file name, not the server's upload-cache path
    _still_serving(server["url"])
  assert _leftovers(server["work"]) == []


def test_api_unsupported_image_type_rejected_by_upload_check(server, tmp_path, assets):
  """A non-image as portrait is refused by Gradio's own file-type check before the callback runs (a readable
  error, shown as a notice in the page); the server keeps serving."""
  from gradio_client import Client, handle_file
  (tmp_path / "portrait.txt").write_text("not an image")
  with pytest.raises(Exception, match="Invalid file type"):
    Client(server["url"], verbose=False).predict(
        handle_file(str(tmp_path / "portrait.txt")), handle_file(str(assets["aud"])), None, None, "period", 0.45,
        0.2, 0.9, True, "final", 42, api_name="/generate")
  _still_serving(server["url"])


def test_api_cancel_midway_leaves_nothing(long_server, server, assets):
  """`job.cancel()` during rendering: Gradio closes the app's generator at its next yield, the writer deletes the
  partial mp4, the job folder goes; the server answers a full request afterwards."""
  from gradio_client import Client, handle_file
  rec, work = long_server["rec"], long_server["work"]
  n0, closed0 = len(rec.rendered), rec.closed_early
  job = Client(long_server["url"], verbose=False).submit(
      handle_file(str(assets["src"])), handle_file(str(assets["aud"])), None, None, "period", 0.45, 0.2, 0.9, True,
      "final", 42, api_name="/generate")
  t_end = time.time() + 300
  while len(rec.rendered) < n0 + 1 and time.time() < t_end and not job.done():
    time.sleep(0.1)
  assert len(rec.rendered) > n0, "no chunk rendered in time"
  partial = [p for p in _leftovers(work) if ".tmp" in p]
  assert partial, _leftovers(work)  # mid-way: the writer's partial mp4 exists
  assert job.cancel()
  t_end = time.time() + 120
  while (_leftovers(work) or rec.closed_early == closed0) and time.time() < t_end:
    time.sleep(0.2)
  assert _leftovers(work) == [] and rec.closed_early == closed0 + 1, (_leftovers(work), rec.closed_early)
  done, total = rec.rendered[-1]
  assert done < total, (done, total)  # stopped mid-way, not run to the end
  print(f"cancelled after {done} of {total} frames; nothing left in the job folder")
  vid, _, status = _predict(server["url"], assets["src"], assets["aud"])  # the server still answers
  assert vid is not None and "Done" in status, status
  assert _leftovers(server["work"]) == []


def _chrome():
  chromium = shutil.which("chromium") or shutil.which("chromium-browser")
  driver = shutil.which("chromedriver")
  if not (chromium and driver):
    pytest.skip("Debian chromium + chromium-driver not installed (apt-get install -y chromium chromium-driver)")
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  opts = webdriver.ChromeOptions()
  opts.binary_location = chromium
  for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1400"):
    opts.add_argument(a)
  return webdriver.Chrome(service=Service(driver), options=opts)


def _upload(drv, elem_id, path):
  from selenium.webdriver.common.by import By
  box = drv.find_element(By.ID, elem_id)
  box.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(path))


def _wait(drv, fn, timeout=300):
  from selenium.webdriver.support.ui import WebDriverWait
  return WebDriverWait(drv, timeout, poll_frequency=1).until(lambda d: fn(d))


def _open_and_upload(drv, url, src, aud):
  """Load the page, wait for it, and put `src` / `aud` into the image and audio inputs (uploads given 3 s)."""
  from selenium.webdriver.common.by import By
  drv.get(url)
  _wait(drv, lambda d: d.find_elements(By.ID, "generate"), 60)
  _upload(drv, "src_img", src)
  _upload(drv, "drv_aud", aud)
  time.sleep(3)  # let the uploads finish


def test_browser_generate_and_bad_file(server, assets, tmp_path):
  from selenium.webdriver.common.by import By
  drv = _chrome()
  try:
    _open_and_upload(drv, server["url"], assets["src"], assets["aud"])
    drv.find_element(By.ID, "generate").click()
    src = _wait(drv, lambda d: [v.get_attribute("src") for v in d.find_elements(By.CSS_SELECTOR, "#result video")
                                if v.get_attribute("src")])[0]
    status = drv.find_element(By.ID, "status").text
    assert "Done" in status, status
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    drv.save_screenshot(str(ARTIFACTS / "app_screenshot.png"))
    import urllib.request
    out = tmp_path / "page_video.mp4"
    urllib.request.urlretrieve(src, out)
    info = video.probe(out)
    assert info["video_frames"] == MAX_FRAMES and info["has_audio"], info
    # A bad file: the page shows a sentence, not a stack trace.
    bad = tmp_path / "bad.png"
    import cv2
    cv2.imwrite(str(bad), np.full((256, 256, 3), 128, np.uint8))  # a valid image without a face
    _open_and_upload(drv, server["url"], bad, assets["aud"])
    drv.find_element(By.ID, "generate").click()
    msg = _wait(drv, lambda d: "Error" in d.find_element(By.ID, "status").text
                and d.find_element(By.ID, "status").text, 120)
    assert "no face" in msg, msg
    drv.save_screenshot(str(ARTIFACTS / "app_bad_file.png"))
  finally:
    drv.quit()


@pytest.mark.slow  # timing-flaky since the faster SECC stream (1 of 3 runs failed on 2026-11-25); cancellation
# itself stays in the default run through test_api_cancel_midway_leaves_nothing
def test_browser_stop_button(long_server, assets):
  """The page's Stop button cancels a running generation mid-way: 'Stopped.' in the page, no files left, and the
  page can generate again afterwards (the queue was freed)."""
  from selenium.webdriver.common.by import By
  rec, work = long_server["rec"], long_server["work"]
  drv = _chrome()
  try:
    _open_and_upload(drv, long_server["url"], assets["src"], assets["aud"])
    n0, closed0 = len(rec.rendered), rec.closed_early
    drv.find_element(By.ID, "generate").click()
    _wait(drv, lambda d: "Rendering" in d.find_element(By.ID, "status").text, 300)
    drv.find_element(By.ID, "stop").click()
    _wait(drv, lambda d: rec.closed_early == closed0 + 1 and not _leftovers(work), 120)
    # The server side (writer closed, job folder removed) can finish before the page's status event arrives.
    _wait(drv, lambda d: "Stopped" in d.find_element(By.ID, "status").text, 60)
    done, total = rec.rendered[-1]
    assert len(rec.rendered) > n0 and done < total, (done, total)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    drv.save_screenshot(str(ARTIFACTS / "app_stopped.png"))
    # the queue is free again: a new generation starts and renders
    drv.find_element(By.ID, "generate").click()
    _wait(drv, lambda d: "Rendering" in d.find_element(By.ID, "status").text, 300)
    drv.find_element(By.ID, "stop").click()
    _wait(drv, lambda d: rec.closed_early == closed0 + 2 and not _leftovers(work), 120)
  finally:
    drv.quit()


@pytest.mark.slow
def test_app_cli_full_network_random_weights(assets, tmp_path):
  """`python -m r3p.app --random_weights` with the REAL portrait network (not the stand-in), 2 frames in one chunk of
  2: the UI path works end to end with the full network (minutes of compilation and ~10 s per frame on 2 cores)."""
  import subprocess
  import sys
  import urllib.request

  from tests.conftest import REPO
  port = _free_port()
  env = dict(os.environ, R3P_MEDIAPIPE_DIR=str(assets["mp"]), PYTHONPATH=str(REPO), TMPDIR=str(tmp_path))
  log = open(tmp_path / "app.log", "w")  # a file, not a pipe: a full pipe would block the server
  proc = subprocess.Popen([sys.executable, "-m", "r3p.app", "--random_weights", "--server_port", str(port),
                           "--max_frames", "2", "--chunk", "2"], env=env, cwd=tmp_path, stdout=log,
                          stderr=subprocess.STDOUT)
  try:
    url = f"http://127.0.0.1:{port}/"
    t_end = time.time() + 900
    while time.time() < t_end:
      assert proc.poll() is None, (tmp_path / "app.log").read_text()[-2000:]
      try:
        urllib.request.urlopen(url, timeout=5)
        break
      except OSError:
        time.sleep(2)
    vid, preview, status = _predict(url, assets["src"], assets["aud"])
    assert vid is not None and "Done: 2 frames" in status and "RANDOM" in status, status
    info = video.probe(_video_path(vid))
    assert info["video_frames"] == 2 and info["has_audio"] and (info["width"], info["height"]) == (512, 512), info
    assert not list(tmp_path.glob("r3p_app_*")), list(tmp_path.glob("r3p_app_*"))  # the job folder is gone
    print(f"full network via the app: {status}")
  finally:
    proc.terminate()
    proc.wait(60)
    log.close()
