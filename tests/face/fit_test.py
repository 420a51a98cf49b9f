"""Tests of the landmark fitting: recovery of synthetic coefficients, objective pieces, the real example video."""
import numpy as np
import pytest

from r3p.face import bfm, fit
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def model():
  return bfm.synthetic_face_model()


def _synthetic_truth(model, t, seed=0):
  rs = np.random.RandomState(seed)
  gt = {"id": rs.randn(1, 80).astype(np.float32) * 0.5, "exp": rs.randn(t, 64).astype(np.float32) * 0.3,
        "euler": (rs.randn(t, 3) * 0.1).astype(np.float32),
        "trans": (rs.randn(t, 3) * [0.1, 0.1, 0.3]).astype(np.float32)}
  proj = np.asarray(fit.project_keypoints(fit._basis(model), np.repeat(gt["id"], t, 0), gt["exp"], gt["euler"],
                                          gt["trans"]))
  return gt, fit.landmarks_from_224(proj, 512, 512)


def test_weights_tables():
  wi, wv = fit.landmark_weights("image"), fit.landmark_weights("video")
  assert wi[33] == 5 and wi[78] == 2 and wi[61] == 2 and wi[93] == 0 and wi[1] == 1 and wi[159] == 5
  assert wv[33] == 3 and wv[159] == 20 and wv[78] == 5 and wv[454] == 0
  with pytest.raises(ValueError):
    fit.landmark_weights("x")


def test_landmark_frame_conversion_roundtrip_and_aspect_bug():
  lms = np.random.RandomState(0).rand(2, 478, 2) * [300, 200]
  l224 = fit.landmarks_to_224(lms, 200, 300)
  np.testing.assert_allclose(fit.landmarks_from_224(l224, 200, 300), lms[:, :468], atol=1e-3)
  np.testing.assert_allclose(l224[..., 1], (200 - lms[:, :468, 1]) * 224 / 200, rtol=1e-5)
  bug = fit.landmarks_to_224(lms, 200, 300, official_aspect_bug=True)
  np.testing.assert_allclose(bug[..., 0], lms[:, :468, 0] * 224 / 200, rtol=1e-5)


def test_laplacian():
  import jax.numpy as jnp
  assert float(fit._lap(jnp.ones((5, 3)))) == 0.0
  assert float(fit._lap(jnp.ones((1, 80)))) == 0.0
  x = jnp.array([[0.0], [1.0], [0.0]])
  # padded [0,0,1,0,0]: outputs -0.5, 1, -0.5 -> mean of squares 0.5
  np.testing.assert_allclose(float(fit._lap(x)), 0.5, rtol=1e-6)


def test_video_fit_recovers_synthetic_coefficients(model):
  gt, lms = _synthetic_truth(model, 6)
  r = fit.fit_video(lms, model, 512)
  assert r["id"].shape == (1, 80) and r["exp"].shape == (6, 64)
  assert r["lm_err_px"].mean() < 0.6  # landmarks reproduced to well under a pixel at 512²
  assert np.degrees(np.abs(r["euler"] - gt["euler"])).max() < 2.0
  assert np.abs(r["trans"][:, :2] - gt["trans"][:, :2]).max() < 0.1  # decimetres
  # Expression is recovered in direction (regularised, so not exactly).
  cos = (r["exp"] * gt["exp"]).sum() / np.linalg.norm(r["exp"]) / np.linalg.norm(gt["exp"])
  assert cos > 0.5


def test_image_fit_batched(model):
  gt, lms = _synthetic_truth(model, 2, seed=1)
  r = fit.fit_images(lms, model, 512)
  assert r["euler"].shape == (2, 3) and r["id"].shape == (2, 80)
  assert r["lm_err_px"].max() < 0.6
  assert np.degrees(np.abs(r["euler"] - gt["euler"])).max() < 2.0
  one = fit.fit_images(lms[1], model, 512)  # the batch fits images independently
  np.testing.assert_allclose(one["euler"][0], r["euler"][1], atol=1e-4)


@pytest.mark.slow
def test_may_video_fit_all_frames():
  from r3p.face import prepare
  task = shared_path("assets", "mediapipe", "face_landmarker.task")
  video = shared_path("assets", "examples", "May_5s.mp4")
  m = bfm.synthetic_face_model(mp_canonical=bfm.canonical_mesh_from_task(task))
  r = prepare.fit_driving_video(video, m, task)
  assert r["exp"].shape == (125, 64) and r["lm478"].shape == (125, 478, 2) and r["camera"].shape == (125, 25)
  print("May_5s mean landmark error px (synthetic model):", r["lm_err_px"].mean())
  assert r["lm_err_px"].mean() < 5.0
