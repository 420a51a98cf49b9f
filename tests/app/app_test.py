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


@pytest.fixture(scope="module")
def server(assets):
  portrait = tiny_portrait(assets["mp"])
  demo = app.build_app(portrait, max_frames=MAX_FRAMES, max_seconds=30)
  port = _free_port()
  _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
  yield {"url": url, "portrait": portrait}
  demo.close()


def _video_path(v):
  return v["video"] if isinstance(v, dict) else v


def _predict(url, src, aud, seed=42):
  from gradio_client import Client, handle_file
  c = Client(url, verbose=False)
  return c.predict(handle_file(str(src)), handle_file(str(aud)) if aud else None, None, None, "period", 0.45, 0.2,
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
  print(f"app request: first {times[0]:.1f} s, second (cached planes) {times[1]:.1f} s")


def test_api_bad_files_then_still_serving(server, assets, tmp_path):
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"\x89PNG not really")
  vid, _, status = _predict(server["url"], bad, assets["aud"])
  assert vid is None and status.startswith("**Error:**") and "cannot decode" in status, status
  silent = tmp_path / "silent.wav"
  import soundfile as sf
  sf.write(silent, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
  vid, _, status = _predict(server["url"], assets["src"], silent)
  assert vid is None and "silent" in status, status
  vid, _, status = _predict(server["url"], assets["src"], None)
  assert vid is None and "driving audio" in status, status
  vid, _, status = _predict(server["url"], assets["src"], assets["aud"])  # the server still answers
  assert vid is not None, status


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


def test_browser_generate_and_bad_file(server, assets, tmp_path):
  from selenium.webdriver.common.by import By
  drv = _chrome()
  try:
    drv.get(server["url"])
    _wait(drv, lambda d: d.find_elements(By.ID, "generate"), 60)
    _upload(drv, "src_img", assets["src"])
    _upload(drv, "drv_aud", assets["aud"])
    time.sleep(3)  # let the uploads finish
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
    drv.get(server["url"])
    _wait(drv, lambda d: d.find_elements(By.ID, "generate"), 60)
    bad = tmp_path / "bad.png"
    import cv2
    cv2.imwrite(str(bad), np.full((256, 256, 3), 128, np.uint8))  # a valid image without a face
    _upload(drv, "src_img", bad)
    _upload(drv, "drv_aud", assets["aud"])
    time.sleep(3)
    drv.find_element(By.ID, "generate").click()
    msg = _wait(drv, lambda d: "Error" in d.find_element(By.ID, "status").text
                and d.find_element(By.ID, "status").text, 120)
    assert "no face" in msg, msg
    drv.save_screenshot(str(ARTIFACTS / "app_bad_file.png"))
  finally:
    drv.quit()
