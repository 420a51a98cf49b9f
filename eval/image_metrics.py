"""PSNR and SSIM on NHWC RGB images, as scikit-image computes them (the usual convention of talking-head papers).

* PSNR: 10 log10(data_range^2 / MSE), MSE over H, W and C; +inf for identical images (mse 0).
* SSIM (Wang et al. 2004) with scikit-image's `gaussian_weights=True, sigma=1.5, use_sample_covariance=False`:
  an 11-tap Gaussian window (sigma 1.5 truncated at 3.5 sigma, normalised), applied separably with half-sample
  symmetric ('reflect' in scipy.ndimage) padding, population (co)variances E[xy] - E[x]E[y], K1 0.01, K2 0.03.
  The score is the SSIM map averaged over the interior (the 5-pixel border dropped), channels averaged; this is
  the valid-convolution value of dm-pix's `ssim(filter_size=11, filter_sigma=1.5)` (checked in the tests), plus the
  full map that dm-pix does not give.
All arithmetic float32 on device (jit-friendly, fixed shapes).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def mse(a, b, data_range: float | None = None) -> jax.Array:
  """Per-image mean squared error over H, W, C. uint8 inputs are compared on the 0..255 scale."""
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  return jnp.mean(jnp.square(a - b), axis=(-3, -2, -1))


def psnr(a, b, data_range: float = 255.0) -> jax.Array:
  """Per-image PSNR in dB; +inf where the images are identical."""
  m = mse(a, b)
  return 10.0 * jnp.log10(jnp.float32(data_range) ** 2 / m)


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
  radius = int(truncate * sigma + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  w = np.exp(-0.5 * (x / sigma) ** 2)
  return (w / w.sum()).astype(np.float32)


def _filter(x, w: np.ndarray):
  """Separable filter of NHWC `x` with half-sample symmetric padding, output the same size."""
  r = (len(w) - 1) // 2
  x = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="symmetric")
  h, wd = x.shape[1] - 2 * r, x.shape[2] - 2 * r
  y = sum(jnp.float32(w[i]) * x[:, i:i + h] for i in range(len(w)))
  return sum(jnp.float32(w[i]) * y[:, :, i:i + wd] for i in range(len(w)))


def ssim_map(a, b, *, data_range: float = 1.0, sigma: float = 1.5, truncate: float = 3.5, k1: float = 0.01,
             k2: float = 0.03) -> jax.Array:
  """Full SSIM map [N, H, W, C] (border values computed on the symmetric-padded images, as scikit-image)."""
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  w = gaussian_window(sigma, truncate)
  ux, uy = _filter(a, w), _filter(b, w)
  uxx, uyy, uxy = _filter(a * a, w), _filter(b * b, w), _filter(a * b, w)
  vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
  c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
  return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim_per_channel(a, b, *, data_range: float = 1.0, sigma: float = 1.5, truncate: float = 3.5) -> jax.Array:
  """[N, C]: the SSIM map averaged over the interior (border of the window radius dropped)."""
  r = int(truncate * sigma + 0.5)
  m = ssim_map(a, b, data_range=data_range, sigma=sigma, truncate=truncate)
  return jnp.mean(m[:, r:-r, r:-r, :], axis=(1, 2))


def ssim(a, b, **kw) -> jax.Array:
  """[N]: per-image SSIM (channel means averaged). Inputs NHWC floats in [0, data_range]."""
  return jnp.mean(ssim_per_channel(a, b, **kw), axis=-1)


@jax.jit
def _sq_err_rows_and_ssim(ref_u8, test_u8):
  # exact integer squared error per image row (a row of 4K RGB pixels stays < 2^31), summed on the host
  d = ref_u8.astype(jnp.int32) - test_u8.astype(jnp.int32)
  rows = jnp.sum(d * d, axis=(2, 3))
  s = ssim(jnp.asarray(ref_u8, jnp.float32) / 255.0, jnp.asarray(test_u8, jnp.float32) / 255.0)
  return rows, s


def psnr_ssim_uint8(ref_u8, test_u8):
  """Batch of uint8 NHWC pairs -> numpy (mse [N] float64 exact, psnr [N] float64, ssim [N] float32).

  MSE is an exact integer sum, so PSNR (float64 on the host) equals scikit-image's
  `peak_signal_noise_ratio(ref, test, data_range=255)` to float64 rounding; +inf for identical images."""
  rows, s = _sq_err_rows_and_ssim(jnp.asarray(ref_u8), jnp.asarray(test_u8))
  n = np.prod(np.shape(ref_u8)[1:])
  m = np.asarray(rows, np.int64).sum(axis=1).astype(np.float64) / n
  with np.errstate(divide="ignore"):
    p = 10.0 * np.log10(255.0 ** 2 / m)
  return m, p, np.asarray(s)
