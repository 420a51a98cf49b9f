"""Tri-plane layout shared by the canonical (I2P) and SECC branches.

Official: a [B, 96, H, W] map is viewed as [B, 3, 32, H, W] (channel = plane·32 + k) and each plane is flipped:
plane 0 ("xy") and plane 1 ("xz") along H, plane 2 ("zy") along H and W (MODEL.md §2.2 step 5).
r3p keeps planes channels-last: [B, 3, H, W, 32].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def to_planes(x_bhwc: jax.Array, n_planes: int = 3) -> jax.Array:
  """[B, H, W, 3·C] (NHWC map, channel = plane·C + k) -> flipped planes [B, 3, H, W, C]."""
  b, h, w, c = x_bhwc.shape
  p = x_bhwc.reshape(b, h, w, n_planes, c // n_planes).transpose(0, 3, 1, 2, 4)
  p0 = jnp.flip(p[:, 0], axis=1)
  p1 = jnp.flip(p[:, 1], axis=1)
  p2 = jnp.flip(p[:, 2], axis=(1, 2))
  return jnp.stack([p0, p1, p2], axis=1)


def planes_to_torch(planes_b3hwc) -> jax.Array:
  """[B, 3, H, W, C] -> the official layout [B, 3, C, H, W]."""
  return jnp.moveaxis(planes_b3hwc, -1, 2)


def planes_from_torch(planes_b3chw) -> jax.Array:
  """The official layout [B, 3, C, H, W] -> [B, 3, H, W, C]."""
  return jnp.moveaxis(planes_b3chw, 2, -1)
