"""The README's first command with the FULL network and random weights (slow: ~10 s per frame plus minutes of
compilation on a 2-core CPU). `R3P_SLOW=1 pytest tests/infer/infer_full_test.py`."""
import os
import subprocess
import sys

import pytest

from r3p import video
from tests.conftest import REPO, shared_path


@pytest.mark.slow
def test_random_weights_full_network_cli(tmp_path):
  src = shared_path("assets", "examples", "Macron.png")
  aud = shared_path("assets", "examples", "Obama_5s.wav")
  mp = shared_path("assets", "mediapipe", "face_landmarker.task").parent
  out = tmp_path / "OUT.mp4"
  env = dict(os.environ, R3P_MEDIAPIPE_DIR=str(mp), PYTHONPATH=str(REPO))
  r = subprocess.run([sys.executable, "-m", "r3p.cli", "infer", "--random_weights", "--src_img", str(src),
                      "--drv_aud", str(aud), "--out_name", str(out), "--max_frames", "2", "--chunk", "2",
                      "--no_progress"], capture_output=True, text=True, env=env, cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "RANDOM seeded weights" in r.stderr
  info = video.probe(out)
  assert info["video_frames"] == 2 and info["has_audio"] and (info["width"], info["height"]) == (512, 512)
