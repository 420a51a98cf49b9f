"""EG3D 25-D camera -> (cam2world, intrinsics) and the `RaySampler` rays (MODEL.md §2.1, §2.4).

Camera vector per batch item: [0:16] cam-to-world 4×4 row-major (OpenCV camera: +x right, +y down, +z forward;
origin in column 3), [16:25] normalised intrinsics 3×3 row-major (fx, fy, cx, cy in units of the image size).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from r3p.nn.numerics import tree_sum

Array = jax.Array


def split_camera(camera: Array) -> tuple[Array, Array]:
  """[B,25] -> (cam2world [B,4,4], intrinsics [B,3,3])."""
  if camera.ndim != 2 or camera.shape[-1] != 25:
    raise ValueError(f"camera must be [B, 25] (c2w 16 + K 9), got shape {camera.shape}")
  camera = camera.astype(jnp.float32)
  return camera[:, :16].reshape(-1, 4, 4), camera[:, 16:25].reshape(-1, 3, 3)


def pixel_grid(resolution: int) -> tuple[Array, Array]:
  """Pixel-centre image coordinates in [0,1] of ray m = i·R + j (row i, column j): x = (j+0.5)/R, y = (i+0.5)/R.

  Computed as the official `arange·(1/R) + 0.5/R` in float32."""
  a = jnp.arange(resolution, dtype=jnp.float32) * jnp.float32(1.0 / resolution) + jnp.float32(0.5 / resolution)
  x = jnp.tile(a, resolution)          # column index varies fastest
  y = jnp.repeat(a, resolution)
  return x, y


def ray_sampler(cam2world: Array, intrinsics: Array, resolution: int) -> tuple[Array, Array]:
  """EG3D RaySampler: (cam2world [B,4,4], intrinsics [B,3,3]) -> (origins [B,R²,3], directions [B,R²,3]).

  Directions are unit vectors (F.normalize, eps 1e-12) from the camera origin through each pixel centre lifted
  to depth 1 in camera space (with the skew term of the official code).
  """
  b = cam2world.shape[0]
  fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
  cx, cy, sk = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None], intrinsics[:, 0, 1, None]
  x_cam, y_cam = pixel_grid(resolution)
  x_cam, y_cam = x_cam[None], y_cam[None]
  z_cam = jnp.ones_like(x_cam)
  # Divisions by the per-item focal lengths as products with their reciprocals: XLA's SPMD pipeline rewrites
  # `a / fy` into `a * (1 / fy)` once fy is a per-device scalar (one item per device), so writing the product
  # ourselves gives every batch size and sharding the same rays (float32 rounding vs the official division).
  rfx, rfy = 1.0 / fx, 1.0 / fy
  x_lift = (x_cam - cx + cy * sk * rfy - sk * y_cam * rfy) * rfx * z_cam
  y_lift = (y_cam - cy) * rfy * z_cam
  x_lift, y_lift = jnp.broadcast_arrays(x_lift, y_lift)
  z_cam = jnp.broadcast_to(z_cam, x_lift.shape)
  cam_rel = jnp.stack([x_lift, y_lift, z_cam, jnp.ones_like(z_cam)], axis=-1)  # [B,M,4]
  # The 4×4 product and the norm as fixed-order elementwise sums (r3p.nn.numerics): a batched einsum/sum rounds
  # differently for B=1 and B=8 on XLA:CPU, and every item must get the same rays at any batch size.
  world = tree_sum(cam2world[:, None, :3, :] * cam_rel[:, :, None, :], -1)  # [B,M,3]
  origin = cam2world[:, None, :3, 3]
  dirs = world - origin
  norm = jnp.sqrt(tree_sum(dirs * dirs, -1, keepdims=True))
  dirs = dirs / jnp.maximum(norm, 1e-12)
  return jnp.broadcast_to(origin, dirs.shape), dirs


def camera_rays(camera: Array, resolution: int) -> tuple[Array, Array]:
  """[B,25] camera -> (origins, directions), each [B,R²,3]."""
  c2w, k = split_camera(camera)
  return ray_sampler(c2w, k, resolution)
