"""Every metric on the example video (the first 8 frames of ../shared/assets/examples/May_5s.mp4, 512x512): the
video against itself, and against degraded copies (JPEG quality 10, Gaussian blur sigma 3, Gaussian noise sigma 12;
MediaPipe loses the face in one of these frames at sigma 20).

The network metrics (LPIPS AlexNet, FID Inception-v3, CSIM ArcFace r50) use SEEDED RANDOM weights here (the public
weight files are not in the repository), so what is tested is what holds for any weights:
  - identity exactly: LPIPS 0, FID ~0 (float64 Frechet distance of identical statistics), CSIM 1;
  - a degraded copy moves every metric away from identity: LPIPS > 0, FID > 0, CSIM < 1, PSNR finite, SSIM < 1,
    LMD / AED / APD > 0 where MediaPipe's landmarks move.
What only the real weights would show, and is NOT claimed here: the ORDER of the degradations for LPIPS / FID / CSIM
(e.g. JPEG-10 farther than mild noise), and values comparable with published tables. PSNR / SSIM have no weights:
their ordering (stronger blur / noise -> lower) is tested in image_metrics_test.py and below.

Inception-v3 (FID) costs minutes to compile and run on a 2-core CPU: that test is marked slow (R3P_SLOW=1); the
others run by default.
"""
import json
import time

import numpy as np
import pytest

from tests.conftest import shared_path

N = 8  # frames: one jitted batch of every network


def _degrade(frames: np.ndarray, kind: str) -> np.ndarray:
  import cv2
  if kind == "jpeg10":
    out = []
    for f in frames:
      ok, buf = cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 10])
      assert ok
      out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return np.stack(out)
  if kind == "blur":
    return np.stack([cv2.GaussianBlur(f, (0, 0), 3.0) for f in frames])
  if kind == "noise":
    n = np.random.default_rng(0).normal(0, 12, frames.shape)
    return np.clip(frames + n, 0, 255).round().astype(np.uint8)
  raise KeyError(kind)


KINDS = ("jpeg10", "blur", "noise")


@pytest.fixture(scope="module")
def clips():
  from eval import video_io
  path = shared_path("assets", "examples", "May_5s.mp4")
  gt = np.stack(list(video_io.iter_frames(str(path), limit=N)))
  assert gt.shape == (N, 512, 512, 3)
  return {"gt": gt, **{k: _degrade(gt, k) for k in KINDS}}


@pytest.fixture(scope="module")
def landmarks(clips):
  from eval.metrics import FaceTracker
  t = FaceTracker(shared_path("assets", "mediapipe", "face_landmarker.task"))
  out = {k: [t(f) for f in v] for k, v in clips.items()}
  t.close()
  for k, v in out.items():
    assert all(l is not None for l in v), f"MediaPipe lost the face in the {k} copy"
  return {k: np.stack(v) for k, v in out.items()}


def test_psnr_ssim(clips):
  from eval import image_metrics as im
  _, p, s = im.psnr_ssim_uint8(clips["gt"], clips["gt"])
  assert np.all(np.isinf(p)) and np.all(p > 0)  # documented: identical frames -> +inf (counted, not averaged)
  np.testing.assert_allclose(np.asarray(s), 1.0, atol=1e-6)
  for k in KINDS:
    _, p, s = im.psnr_ssim_uint8(clips["gt"], clips[k])
    assert np.all(np.isfinite(p)) and np.all(p < 40) and np.all(np.asarray(s) < 0.99), (k, p, s)
  # a real ordering (no weights involved): stronger degradations score lower
  _, p_mild, s_mild = im.psnr_ssim_uint8(clips["gt"], clips["noise"])  # sigma 12
  strong = np.clip(clips["gt"] + np.random.default_rng(1).normal(0, 60, clips["gt"].shape), 0, 255)
  _, p_strong, s_strong = im.psnr_ssim_uint8(clips["gt"], strong.round().astype(np.uint8))
  assert np.all(p_strong < p_mild) and np.all(np.asarray(s_strong) < np.asarray(s_mild))


def test_lpips_random_weights(clips):
  from eval import lpips
  f = lpips.distance_fn(lpips.build("alex", None, seed=0))
  d0 = np.asarray(f(clips["gt"], clips["gt"]))
  assert np.all(np.abs(d0) < 1e-9), d0
  for k in KINDS:
    d = np.asarray(f(clips["gt"], clips[k]))
    assert np.all(d > 1e-4), (k, d)


@pytest.mark.slow
def test_fid_random_weights(clips):
  from eval import fid, inception
  f = inception.features_fn(inception.build(None, seed=0))
  feats = {k: np.asarray(f(v), np.float64) for k, v in clips.items()}
  assert feats["gt"].shape == (N, 2048) and np.isfinite(feats["gt"]).all()
  mu, sig = fid.statistics(feats["gt"])
  d0 = fid.frechet_distance(mu, sig, mu, sig)
  # 8 frames: a rank-7 covariance in 2048 dims, so this also exercises the eps offset for singular covariances
  assert abs(d0) < 1e-6, d0
  # streaming statistics (batches of 3) give the same number
  rs = fid.RunningStats()
  for s in range(0, N, 3):
    rs.update(feats["gt"][s:s + 3])
  assert abs(fid.frechet_distance(rs.mu, rs.sigma, mu, sig)) < 1e-6
  for k in KINDS:
    d = fid.frechet_distance(*fid.statistics(feats[k]), mu, sig)
    assert d > 1e-3 and d > 1e3 * abs(d0), (k, d)


def test_csim_random_weights(clips, landmarks):
  from eval import arcface, face_align
  f = arcface.embed_fn(arcface.build(None, arch="r50", seed=0))
  five = list(face_align.MEDIAPIPE_5PT)
  crops = {k: np.stack([face_align.norm_crop(fr, lm[five]) for fr, lm in zip(clips[k], landmarks[k])])
           for k in clips}
  emb = {k: np.asarray(f(v), np.float64) for k, v in crops.items()}
  np.testing.assert_allclose(np.sum(emb["gt"] * emb["gt"], -1), 1.0, atol=1e-5)  # CSIM(video, itself) = 1
  for k in KINDS:
    cs = np.sum(emb[k] * emb["gt"], -1)
    assert np.all(cs < 1 - 1e-4) and np.all(cs > -1 - 1e-6), (k, cs)


def test_lmd(clips, landmarks):
  from eval import lmd
  w = clips["gt"].shape[2]
  g = lmd.mouth_points(landmarks["gt"], w)
  assert np.all(lmd.lmd_per_frame(g, g) == 0)
  for k in KINDS:
    d = lmd.lmd_per_frame(lmd.mouth_points(landmarks[k], w), g)
    # the mouth landmarks move a little (sub-pixel to a few pixels of a 256-wide frame), never more than the mouth
    assert d.mean() > 1e-3 and d.max() < 30, (k, d)


def test_aed_apd(clips, landmarks):
  """3DMM fits (synthetic face model: no BFM in the repository) of the gt and the noisy copy, in one batch as the
  CLI fits them. Identity: exactly 0. Noise: the landmarks move, so do the coefficients."""
  from eval import aed_apd
  from r3p.face import bfm
  k = 4  # frames fitted per copy (the fit is the slowest part of this module)
  model = bfm.default_face_model(None, None, log=None)
  t = time.perf_counter()
  c = aed_apd.fit_coeffs(np.concatenate([landmarks["gt"][:k], landmarks["gt"][:k], landmarks["noise"][:k]]),
                         model, 512, 512)
  print(f"3DMM fit of {3 * k} frames: {time.perf_counter() - t:.1f} s")
  part = lambda i: {key: np.asarray(c[key])[i * k:(i + 1) * k] for key in ("exp", "euler", "trans")}  # noqa: E731
  a0, p0 = aed_apd.distances(part(0), part(1))
  assert np.all(a0 == 0) and np.all(p0 == 0), (a0, p0)
  a1, p1 = aed_apd.distances(part(2), part(0))
  assert np.all(a1 > 0) and np.all(p1 > 0), (a1, p1)


def test_cli_example_video_against_itself(clips, tmp_path, capsys):
  """The whole CLI on the example clip vs itself (psnr, ssim, lpips, csim, lmd): identity values in results.json.
  The source image is the clip's first decoded frame, so CSIM of frame 0 is 1 (other frames: the head moves)."""
  import cv2

  from eval import metrics
  from eval.video_io import iter_frames
  from tests.eval.metrics_cli_test import _write_video
  vid = tmp_path / "clip.mp4"
  _write_video(vid, clips["gt"])
  first = next(iter_frames(str(vid), limit=1))
  cv2.imwrite(str(tmp_path / "src.png"), first[..., ::-1])
  out = tmp_path / "r.json"
  rc = metrics.main(["--pred", str(vid), "--gt", str(vid), "--src_img", str(tmp_path / "src.png"),
                     "--metrics", "psnr,ssim,lpips,csim,lmd", "--random_weights", "--quiet", "--out", str(out),
                     "--landmarker", str(shared_path("assets", "mediapipe", "face_landmarker.task"))])
  err = capsys.readouterr().err
  assert rc == 0, err
  r = json.loads(out.read_text())
  s = r["summary"]
  assert r["frames"] == N and r["skipped"]["psnr_identical_frames"] == N and s["psnr"] == float("inf")
  assert abs(s["ssim"] - 1) < 1e-6 and abs(s["lpips"]) < 1e-9 and s["lmd"] == 0
  assert r["skipped"]["csim"] == 0 and r.get("random_weights") is True and "RANDOM WEIGHTS" in err
  rows = (tmp_path / "r.csv").read_text().splitlines()
  header = rows[0].split(",")
  csim0 = float(rows[1].split(",")[header.index("csim")])
  assert abs(csim0 - 1) < 1e-5, csim0
