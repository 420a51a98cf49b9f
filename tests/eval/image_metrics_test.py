"""PSNR / SSIM: identity, monotonic degradation, agreement with dm-pix on the valid region."""
import numpy as np
import pytest

from eval import image_metrics as im


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:64, 0:64]
  base = np.stack([128 + 60 * np.sin(x / 5.0), 128 + 60 * np.cos(y / 7.0), 100 + x + y], -1)
  base = np.clip(base + rng.normal(0, 5, base.shape), 0, 255).astype(np.uint8)[None]
  return base


def _blur(u8, k):
  from scipy.ndimage import uniform_filter
  return np.clip(uniform_filter(u8.astype(np.float64), size=(1, k, k, 1)), 0, 255).round().astype(np.uint8)


def _noise(u8, s, seed=1):
  return np.clip(u8 + np.random.default_rng(seed).normal(0, s, u8.shape), 0, 255).round().astype(np.uint8)


def test_identity(images):
  m, p, s = im.psnr_ssim_uint8(images, images)
  assert m[0] == 0 and np.isinf(p[0]) and p[0] > 0
  assert abs(float(s[0]) - 1.0) < 1e-6


def test_degradations_move_the_right_way(images):
  _, p1, s1 = im.psnr_ssim_uint8(images, _noise(images, 3))
  _, p2, s2 = im.psnr_ssim_uint8(images, _noise(images, 12))
  assert p1[0] > p2[0] and s1[0] > s2[0]
  _, p3, s3 = im.psnr_ssim_uint8(images, _blur(images, 3))
  _, p4, s4 = im.psnr_ssim_uint8(images, _blur(images, 7))
  assert p3[0] > p4[0] and s3[0] > s4[0]


def test_ssim_matches_dm_pix_on_valid_region(images):
  import dm_pix
  a = images.astype(np.float32) / 255
  b = _noise(images, 8).astype(np.float32) / 255
  ref = float(dm_pix.ssim(a, b, max_val=1.0, filter_size=11, filter_sigma=1.5)[0])
  mine = float(im.ssim(a, b)[0])
  assert abs(ref - mine) < 1e-5, (ref, mine)  # dm-pix convolves at default precision


def test_psnr_exact_formula(images):
  other = _noise(images, 5)
  m, p, _ = im.psnr_ssim_uint8(images, other)
  ref_m = np.mean((images.astype(np.float64) - other) ** 2)
  assert m[0] == ref_m and abs(p[0] - 10 * np.log10(255 ** 2 / ref_m)) < 1e-12
