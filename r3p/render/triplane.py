"""Tri-plane feature lookup (`ImportanceRenderer.run_model` / `sample_from_planes`, MODEL.md §2.7).

Planes are r3p layout `[B, 3, H, W, C]` (channels-last per plane). A world point p in the box [-b/2, b/2]^3
(b = box_warp) is scaled by 2/b to [-1, 1]^3 and projected with the official `inv(plane_axes)` permutation:

  plane 0 -> (gx, gy) = (x, y);  plane 1 -> (x, z);  plane 2 -> (z, x)   (EG3D quirk: plane 2 is z,x, not z,y)

then sampled like `F.grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False)`: gx indexes W
(columns), gy indexes H (rows); a corner outside the plane contributes 0. Features are averaged over the planes.

The lookup is a batched row gather on the planes flattened to `[B, 3·H·W, C]` (4 corners × 3 planes), so no one-hot
or per-corner `[M, 12, C]` tensor is materialised; XLA fuses the 12 gathers and the weighted sum into one loop.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# (first, second) coordinate of each plane's 2-D grid, as indices into (x, y, z).
PLANE_AXES = ((0, 1), (0, 2), (2, 0))


def project(points: Array, box_warp: float = 1.0) -> Array:
  """[..., 3] world points -> [..., 3, 2] grid coordinates (gx, gy) in [-1, 1] per plane."""
  p = points * (2.0 / box_warp)
  return jnp.stack([jnp.stack([p[..., a], p[..., b]], -1) for a, b in PLANE_AXES], axis=-2)


def corner_taps(grid: Array, height: int, width: int):
  """Bilinear taps of grid_sample(align_corners=False, zeros) for grid [..., 2] = (gx, gy).

  Returns (rows [..., 4] int32 clipped into range, cols [..., 4], weights [..., 4]) for corners
  (nw, ne, sw, se); the weight of a corner outside the image is 0 (zero padding).
  """
  gx, gy = grid[..., 0], grid[..., 1]
  # Unnormalise exactly as torch: ((g + 1) * size - 1) / 2.
  ix = ((gx + 1.0) * width - 1.0) / 2.0
  iy = ((gy + 1.0) * height - 1.0) / 2.0
  x0 = jnp.floor(ix)
  y0 = jnp.floor(iy)
  x1, y1 = x0 + 1.0, y0 + 1.0
  w_nw = (x1 - ix) * (y1 - iy)
  w_ne = (ix - x0) * (y1 - iy)
  w_sw = (x1 - ix) * (iy - y0)
  w_se = (ix - x0) * (iy - y0)
  xs = jnp.stack([x0, x1, x0, x1], -1)
  ys = jnp.stack([y0, y0, y1, y1], -1)
  ws = jnp.stack([w_nw, w_ne, w_sw, w_se], -1)
  inside = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
  ws = jnp.where(inside, ws, 0.0)
  # Clip before the int cast: coordinates of far-away (or non-finite) points stay in range.
  cols = jnp.clip(jnp.nan_to_num(xs), 0, width - 1).astype(jnp.int32)
  rows = jnp.clip(jnp.nan_to_num(ys), 0, height - 1).astype(jnp.int32)
  return rows, cols, ws


def _flat_and_index(planes: Array, points: Array, box_warp: float, dtype):
  """Planes flattened per batch item to [B, 3·H·W, C] and the flat row index [B,M,3,4] + tap weights.

  The batch stays a separate leading dim of both operand and indices (a batched gather, via vmap), so the SPMD
  partitioner shards the lookup over a batch-sharded mesh instead of all-gathering the indices.
  """
  b, n_planes, h, w, c = planes.shape
  flat = planes.astype(dtype).reshape(b, n_planes * h * w, c)
  rows, cols, ws = corner_taps(project(points.astype(jnp.float32), box_warp), h, w)  # [B,M,3,4]
  base = jnp.arange(n_planes, dtype=jnp.int32)[None, None, :, None] * (h * w)
  return flat, base + rows * w + cols, ws


def _rows(flat: Array, idx: Array) -> Array:
  """flat [B,P,C], idx [B,M] -> [B,M,C]: one row gather per batch item."""
  return jax.vmap(lambda a, i: a[i])(flat, idx)


def sample_planes(planes: Array, points: Array, box_warp: float = 1.0, *, dtype=None) -> Array:
  """Per-plane bilinear features: planes [B,3,H,W,C], points [B,M,3] -> [B,3,M,C] (the decoder's `in0`).

  `dtype` (default: planes' dtype) is the gather/interpolation compute dtype; tap weights are computed in fp32.
  """
  dtype = dtype or planes.dtype
  flat, idx, ws = _flat_and_index(planes, points, box_warp, dtype)
  out = []
  for k in range(planes.shape[1]):
    acc = None
    for t in range(4):
      v = _rows(flat, idx[:, :, k, t]) * ws[:, :, k, t, None].astype(dtype)  # [B,M,C]
      acc = v if acc is None else acc + v
    out.append(acc)
  return jnp.stack(out, axis=1)


def sample_mean(planes: Array, points: Array, box_warp: float = 1.0, *, dtype=None) -> Array:
  """Mean over planes of `sample_planes`: [B,M,C], the decoder's input feature (official `.mean(1)`)."""
  n_planes = planes.shape[1]
  dtype = dtype or planes.dtype
  flat, idx, ws = _flat_and_index(planes, points, box_warp, dtype)
  total = None
  for k in range(n_planes):
    acc = None
    for t in range(4):
      v = _rows(flat, idx[:, :, k, t]) * ws[:, :, k, t, None].astype(dtype)
      acc = v if acc is None else acc + v
    total = acc if total is None else total + acc
  return total / n_planes
