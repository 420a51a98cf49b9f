"""`torch.nn.functional.grid_sample` (bilinear / trilinear) on channels-last input, torch semantics.

Layouts: `grid_sample_2d(x [N,H,W,C], grid [N,Ho,Wo,2]) -> [N,Ho,Wo,C]` and
`grid_sample_3d(x [N,D,H,W,C], grid [N,Do,Ho,Wo,3]) -> [N,Do,Ho,Wo,C]`. As in torch, the grid's last axis is
ordered (x → W, y → H, z → D) and holds normalised coordinates in [-1, 1]:

  align_corners=True:  -1 / +1 are the centres of the first / last pixel: src = (g + 1) / 2 · (size − 1)
  align_corners=False: -1 / +1 are the outer edges of the first / last pixel: src = ((g + 1) · size − 1) / 2

padding 'zeros': corners outside the input contribute 0 (their weights are kept, so the result fades out);
padding 'border': the source coordinate is clamped to [0, size − 1] before interpolation.

Implementation: the 4 (2-D) or 8 (3-D) corner values are gathered from the input flattened to [N, pixels, C]
with flat integer indices (one row gather per corner, no one-hot matmuls), out-of-range corners read index 0
and get weight 0. The arithmetic follows torch's CPU kernels (2-D: the vectorised kernel, weights
(1−tx)(1−ty) etc.; 3-D: the scalar kernel, weights as products of distances to the opposite corner, summed in
the order tnw, tne, tsw, tse, bnw, bne, bsw, bse) so that float32 results agree to the ulp level.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

_PADDING = ("zeros", "border")


def _check(x, grid, nd, mode, padding_mode):
  if x.ndim != nd + 2:
    raise ValueError(f"grid_sample_{nd}d: input must be [N,{'D,' if nd == 3 else ''}H,W,C], got shape {x.shape}")
  if grid.ndim != nd + 2 or grid.shape[-1] != nd or grid.shape[0] != x.shape[0]:
    raise ValueError(f"grid_sample_{nd}d: grid must be [N,...,{nd}] with N={x.shape[0]}, got shape {grid.shape}")
  if padding_mode not in _PADDING:
    raise ValueError(f"grid_sample: padding_mode must be one of {_PADDING}, got {padding_mode!r}")
  if mode not in ("bilinear", "trilinear"):
    raise ValueError(f"grid_sample: only mode='bilinear' (trilinear for 3-D) is implemented, got {mode!r}")


def _unnormalize(g: Array, size: int, align_corners: bool, vectorised: bool) -> Array:
  """Normalised coordinate -> pixel coordinate (float32), in the operation order of the torch kernel."""
  if vectorised:  # aten/src/ATen/native/cpu/GridSamplerKernel.cpp (2-D, float)
    if align_corners:
      return (g + 1.0) * jnp.float32((size - 1) / 2)
    return (g + 1.0) * jnp.float32(size / 2) - 0.5
  if align_corners:  # aten/src/ATen/native/GridSampler.h grid_sampler_unnormalize (3-D scalar kernel)
    return ((g + 1.0) / 2.0) * jnp.float32(size - 1)
  return ((g + 1.0) * jnp.float32(size) - 1.0) / 2.0


def _source_coord(g, size, align_corners, padding_mode, vectorised):
  c = _unnormalize(g, size, align_corners, vectorised)
  if padding_mode == "border":
    c = jnp.clip(c, 0.0, jnp.float32(size - 1))
  return c


def _gather(x_flat: Array, idx: Array) -> Array:
  """x_flat [N, P, C], idx [N, Q] int32 -> [N, Q, C] (a row gather per batch item)."""
  return jax.vmap(lambda a, i: jnp.take(a, i, axis=0, mode="clip"))(x_flat, idx)


def grid_sample_2d(x: Array, grid: Array, *, mode: str = "bilinear", padding_mode: str = "zeros",
                   align_corners: bool = False) -> Array:
  """torch F.grid_sample for 4-D input, channels-last. x [N,H,W,C], grid [N,Ho,Wo,2] (x, y) -> [N,Ho,Wo,C]."""
  _check(x, grid, 2, mode, padding_mode)
  n, h, w, c = x.shape
  out_sp = grid.shape[1:-1]
  g = grid.astype(jnp.float32).reshape(n, -1, 2)
  ix = _source_coord(g[..., 0], w, align_corners, padding_mode, True)
  iy = _source_coord(g[..., 1], h, align_corners, padding_mode, True)
  x0f, y0f = jnp.floor(ix), jnp.floor(iy)
  tx, ty = ix - x0f, iy - y0f
  ex, sy = 1.0 - tx, 1.0 - ty
  x0, y0 = x0f.astype(jnp.int32), y0f.astype(jnp.int32)
  x1, y1 = x0 + 1, y0 + 1
  xf = x.reshape(n, h * w, c)
  out = None
  for xi, yi, wt in ((x0, y0, sy * ex), (x1, y0, sy * tx), (x0, y1, ty * ex), (x1, y1, ty * tx)):
    valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    idx = jnp.where(valid, yi * w + xi, 0)
    wv = jnp.where(valid, wt, 0.0).astype(x.dtype)
    term = _gather(xf, idx) * wv[..., None]
    out = term if out is None else out + term
  return out.reshape((n,) + tuple(out_sp) + (c,))


def grid_sample_3d(x: Array, grid: Array, *, mode: str = "bilinear", padding_mode: str = "zeros",
                   align_corners: bool = False) -> Array:
  """torch F.grid_sample for 5-D input, channels-last.

  x [N,D,H,W,C], grid [N,Do,Ho,Wo,3] ordered (x → W, y → H, z → D) -> [N,Do,Ho,Wo,C]. mode 'bilinear' (torch's
  name for trilinear on 5-D input) or 'trilinear'.
  """
  _check(x, grid, 3, mode, padding_mode)
  n, d, h, w, c = x.shape
  out_sp = grid.shape[1:-1]
  g = grid.astype(jnp.float32).reshape(n, -1, 3)
  ix = _source_coord(g[..., 0], w, align_corners, padding_mode, False)
  iy = _source_coord(g[..., 1], h, align_corners, padding_mode, False)
  iz = _source_coord(g[..., 2], d, align_corners, padding_mode, False)
  x0f, y0f, z0f = jnp.floor(ix), jnp.floor(iy), jnp.floor(iz)
  x1f, y1f, z1f = x0f + 1.0, y0f + 1.0, z0f + 1.0
  # Distances to the far / near faces along each axis (torch: e.g. tnw = (ix_bse-ix)*(iy_bse-iy)*(iz_bse-iz)).
  ax0, ax1 = x1f - ix, ix - x0f
  ay0, ay1 = y1f - iy, iy - y0f
  az0, az1 = z1f - iz, iz - z0f
  x0, y0, z0 = x0f.astype(jnp.int32), y0f.astype(jnp.int32), z0f.astype(jnp.int32)
  x1, y1, z1 = x0 + 1, y0 + 1, z0 + 1
  xf = x.reshape(n, d * h * w, c)
  corners = (  # torch order: tnw, tne, tsw, tse, bnw, bne, bsw, bse (t/b = z0/z1, n/s = y0/y1, w/e = x0/x1)
      (x0, y0, z0, ax0 * ay0 * az0), (x1, y0, z0, ax1 * ay0 * az0),
      (x0, y1, z0, ax0 * ay1 * az0), (x1, y1, z0, ax1 * ay1 * az0),
      (x0, y0, z1, ax0 * ay0 * az1), (x1, y0, z1, ax1 * ay0 * az1),
      (x0, y1, z1, ax0 * ay1 * az1), (x1, y1, z1, ax1 * ay1 * az1))
  out = None
  for xi, yi, zi, wt in corners:
    valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h) & (zi >= 0) & (zi < d)
    idx = jnp.where(valid, (zi * h + yi) * w + xi, 0)
    wv = jnp.where(valid, wt, 0.0).astype(x.dtype)
    term = _gather(xf, idx) * wv[..., None]
    out = term if out is None else out + term
  return out.reshape((n,) + tuple(out_sp) + (c,))
