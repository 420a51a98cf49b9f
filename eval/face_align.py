"""ArcFace 5-point alignment (insightface `norm_crop`, mode 'arcface'): similarity transform + bilinear warp.

Points, in order: left eye, right eye, nose tip, left mouth corner, right mouth corner (image left/right), (x, y)
pixels with integer = pixel centre. From MediaPipe's 478-point FaceLandmarker: indices `MEDIAPIPE_5PT`
(iris centres 468 / 473, nose tip 1, mouth corners 61 / 291), as the parity fixtures define them.

`similarity_matrix` is the Umeyama least-squares similarity (no reflection) mapping the points onto the 112x112
ArcFace template (scikit-image `SimilarityTransform.estimate`), float64. `warp_affine` is an exact bilinear warp
with OpenCV's `warpAffine` conventions (dst(x, y) = src(M^-1 (x, y, 1)), integer coordinates are pixel centres,
taps outside the image read 0), in float32 JAX; round it for a uint8 crop.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                        [70.7299, 92.2041]], np.float32)
MEDIAPIPE_5PT = (468, 473, 1, 61, 291)


def arcface_template(image_size: int = 112) -> np.ndarray:
  if image_size % 112 != 0 and image_size % 128 != 0:
    raise ValueError(f"ArcFace crops are 112*k or 128*k pixels, not {image_size}")
  ratio = image_size / 112.0 if image_size % 112 == 0 else image_size / 128.0
  diff_x = 0.0 if image_size % 112 == 0 else 8.0 * ratio
  dst = ARCFACE_DST.astype(np.float64) * np.float32(ratio)
  dst[:, 0] += diff_x
  return dst


def umeyama(src, dst, estimate_scale: bool = True) -> np.ndarray:
  """[3, 3] similarity T with dst ~ T (src, 1), least squares (Umeyama 1991), float64."""
  # computed in the inputs' precision (float32 points -> float32 maths), as scikit-image does
  dt = np.result_type(np.asarray(src).dtype, np.asarray(dst).dtype, np.float32)
  src = np.asarray(src, dt)
  dst = np.asarray(dst, dt)
  n, dim = src.shape
  sm, dm = src.mean(0), dst.mean(0)
  sd, dd = src - sm, dst - dm
  a = dd.T @ sd / n
  d = np.ones(dim)
  if np.linalg.det(a) < 0:
    d[-1] = -1
  t = np.eye(dim + 1, dtype=dt)
  u, s, vt = np.linalg.svd(a)
  rank = np.linalg.matrix_rank(a)
  if rank == 0:
    raise ValueError("degenerate landmarks (all points coincide)")
  if rank == dim - 1:
    if np.linalg.det(u) * np.linalg.det(vt) > 0:
      t[:dim, :dim] = u @ vt
    else:
      dl = d[-1]
      d[-1] = -1
      t[:dim, :dim] = u @ np.diag(d) @ vt
      d[-1] = dl
  else:
    t[:dim, :dim] = u @ np.diag(d) @ vt
  scale = 1.0 / sd.var(axis=0).sum() * (s @ d) if estimate_scale else 1.0
  t[:dim, dim] = dm - scale * (t[:dim, :dim] @ sm)
  t[:dim, :dim] *= scale
  return t


def similarity_matrix(landmarks, image_size: int = 112) -> np.ndarray:
  """[2, 3] float64 matrix mapping source pixel coordinates to crop coordinates. Like insightface, the
  estimate runs in float32 (float32 points and template) unless the points are float64."""
  lm = np.asarray(landmarks)
  if lm.shape != (5, 2) or not np.isfinite(lm).all():
    raise ValueError(f"need 5 finite (x, y) points, got {lm.shape}")
  if lm.dtype != np.float64:
    lm = lm.astype(np.float32)
  dst = arcface_template(image_size).astype(lm.dtype)
  return umeyama(lm, dst)[:2].astype(np.float64)


def invert_affine(m) -> np.ndarray:
  m = np.asarray(m, np.float64)
  full = np.vstack([m, [0.0, 0.0, 1.0]])
  return np.linalg.inv(full)[:2]


def sample_grid(m_inv, size: tuple[int, int]):
  """Source taps of the warp, in float64 on the host (a float32 coordinate near pixel 500 would carry 3e-5 px of
  rounding): integer corner (x0, y0) [..., S, S] int32 and fractions (fx, fy) float32. Leading dims of `m_inv`
  ([..., 2, 3]) are kept."""
  m = np.asarray(m_inv, np.float64)
  oh, ow = size
  ys, xs = np.meshgrid(np.arange(oh, dtype=np.float64), np.arange(ow, dtype=np.float64), indexing="ij")
  u = m[..., 0, 0, None, None] * xs + m[..., 0, 1, None, None] * ys + m[..., 0, 2, None, None]
  v = m[..., 1, 0, None, None] * xs + m[..., 1, 1, None, None] * ys + m[..., 1, 2, None, None]
  x0, y0 = np.floor(u), np.floor(v)
  return x0.astype(np.int32), y0.astype(np.int32), (u - x0).astype(np.float32), (v - y0).astype(np.float32)


@jax.jit
def bilinear_gather(image, x0, y0, fx, fy):
  """[H, W, C] image, taps [S, S] -> [S, S, C] float32; taps outside the image read 0 (BORDER_CONSTANT)."""
  img = jnp.asarray(image, jnp.float32)
  h, w = img.shape[0], img.shape[1]

  def tap(yy, xx):
    ok = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
    val = img[jnp.clip(yy, 0, h - 1), jnp.clip(xx, 0, w - 1)]
    return jnp.where(ok[..., None], val, 0.0)

  fx, fy = jnp.asarray(fx)[..., None], jnp.asarray(fy)[..., None]
  return ((1 - fx) * (1 - fy) * tap(y0, x0) + fx * (1 - fy) * tap(y0, x0 + 1)
          + (1 - fx) * fy * tap(y0 + 1, x0) + fx * fy * tap(y0 + 1, x0 + 1))


def warp_affine(image, m_inv, size: tuple[int, int]):
  """Bilinear warp of [H, W, C] `image` to [size[0], size[1], C] float32, `m_inv` [2, 3] mapping crop -> source
  (cv2.warpAffine with WARP_INVERSE_MAP semantics, BORDER_CONSTANT 0, exact coordinates, float32 values)."""
  return bilinear_gather(image, *sample_grid(m_inv, size))


batched_gather = jax.jit(jax.vmap(bilinear_gather))


def norm_crop(image, landmarks, image_size: int = 112, *, as_uint8: bool = True):
  """insightface norm_crop: the 5-point aligned ArcFace crop [S, S, C] (uint8 rounded, or float32)."""
  m = similarity_matrix(landmarks, image_size)
  out = warp_affine(image, invert_affine(m), (image_size, image_size))
  if as_uint8:
    return np.asarray(jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8))
  return np.asarray(out)
