"""Near/far of each ray from its intersection with the cube [-s/2, s/2]^3 (MODEL.md §2.5).

`ray_limits_box` is `math_utils.get_ray_limits_box` (slab test with invdir = 1/d; ±inf allowed); a miss gives
(t_min, t_max) = (-1, -2). `ray_start_end` applies the ImportanceRenderer fix-up for missed rays, an EG3D quirk
kept for parity: if any ray is valid, invalid rays get start = min(valid starts) and end = **max(valid starts)**
(not max of the ends); the min/max run over all rays of all batch items.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def ray_limits_box(origins: Array, directions: Array, box_side_length: float = 1.0) -> tuple[Array, Array]:
  """origins, directions [..., 3] -> (t_min [..., 1], t_max [..., 1])."""
  o = origins.astype(jnp.float32)
  d = directions.astype(jnp.float32)
  half = box_side_length / 2
  inv = 1.0 / d
  neg = inv < 0
  lo = jnp.where(neg, half, -half)    # bounds[sign]
  hi = jnp.where(neg, -half, half)    # bounds[1 - sign]
  t0 = (lo - o) * inv
  t1 = (hi - o) * inv
  tmin, tmax = t0[..., 0], t1[..., 0]
  tymin, tymax = t0[..., 1], t1[..., 1]
  valid = ~((tmin > tymax) | (tymin > tmax))
  tmin = jnp.maximum(tmin, tymin)     # torch.max propagates NaN, as jnp.maximum does
  tmax = jnp.minimum(tmax, tymax)
  tzmin, tzmax = t0[..., 2], t1[..., 2]
  valid &= ~((tmin > tzmax) | (tzmin > tmax))
  tmin = jnp.maximum(tmin, tzmin)
  tmax = jnp.minimum(tmax, tzmax)
  tmin = jnp.where(valid, tmin, -1.0)
  tmax = jnp.where(valid, tmax, -2.0)
  return tmin[..., None], tmax[..., None]


def ray_start_end(origins: Array, directions: Array, box_side_length: float = 1.0):
  """(start [B,N,1], end [B,N,1], is_valid [B,N,1]) with the official fix-up of invalid rays (see module doc)."""
  start, end = ray_limits_box(origins, directions, box_side_length)
  valid = end > start
  any_valid = jnp.any(valid)
  vmin = jnp.min(jnp.where(valid, start, jnp.inf))
  vmax = jnp.max(jnp.where(valid, start, -jnp.inf))
  start = jnp.where(valid | ~any_valid, start, vmin)
  end = jnp.where(valid | ~any_valid, end, vmax)
  return start, end, valid
