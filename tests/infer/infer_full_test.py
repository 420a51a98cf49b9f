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


def _full_inputs(b=1):
  import jax
  import jax.numpy as jnp
  from eval.bench_forward import random_inputs
  img, camera, cond = random_inputs(b)
  return img, camera, cond, jax.random.key(0)


def test_depth_pass_traces_on_the_full_network():
  """concat_debug's renderer-only depth pass reaches into the full network's children (motion adapter, decoder,
  config): traced abstractly (no compute) to catch a renamed child or option."""
  import jax
  from flax import nnx
  from r3p import api
  from r3p.models import portrait
  model = nnx.eval_shape(lambda: portrait.OSAvatarSECC_Img2plane_Torso(rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  img, camera, cond, key = _full_inputs()

  def depth(state, cano, camera, cond, key):
    m = nnx.merge(graphdef, state)
    return api._volume_depth(m, {"cano_planes": cano}, camera, cond["cond_cano"], cond["cond_src"],
                             cond["cond_tgt"], key)
  cano = jax.ShapeDtypeStruct((1, 3, 256, 256, 32), "float32")
  out = jax.eval_shape(depth, state, cano, camera, cond, key)
  assert out.shape == (1, 128, 128, 1)


@pytest.mark.slow
def test_depth_pass_equals_frame_depth_full_network():
  """The renderer-only pass gives the frame's depth (same key -> same draws), full network, random weights."""
  import jax
  import numpy as np
  from flax import nnx
  from r3p import api
  model = api.random_portrait_model(0)
  img, camera, cond, key = _full_inputs()
  graphdef, state = nnx.split(model)

  @jax.jit
  def both(state):
    m = nnx.merge(graphdef, state)
    src = m.source(img, cond["ref_torso_img"], cond["bg_img"], cond["segmap"])
    full = m.frame(src, camera, cond["cond_cano"], cond["cond_src"], cond["cond_tgt"], cond["kp_s"], cond["kp_d"],
                   key=key)["image_depth"]
    return full, api._volume_depth(m, src, camera, cond["cond_cano"], cond["cond_src"], cond["cond_tgt"], key)
  a, b = both(state)
  assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= 1e-5
