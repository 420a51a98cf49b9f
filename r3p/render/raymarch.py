"""MipRayMarcher2 (MODEL.md §2.8) on top of the fused ray-marching op.

One definition of the compositing maths: `r3p.kernels.raymarch.base.composite` (the kernel's reference). This
module adds the global depth clamp, which is not per-ray: the official clamps the composite depth to
[min(depths), max(depths)] taken over the WHOLE depth tensor (all rays of all batch items), so it is applied here,
outside the (per-ray, shardable) op.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from r3p.kernels.raymarch import api
from r3p.kernels.raymarch import base

Array = jax.Array


def mip_ray_marcher(colors: Array, densities: Array, depths: Array) -> tuple[Array, Array, Array]:
  """MipRayMarcher2 on given samples: colors [B,N,S,C], densities [B,N,S], depths [B,N,S] ->
  (rgb [B,N,C] (×2−1), depth [B,N] clamped globally, weights [B,N,S−1])."""
  rgb, depth, w = base.composite(colors, densities, depths)
  return rgb, base.clamp_depth(depth, depths), w


def march(planes: Array, decoder, origins: Array, directions: Array, depths: Array, *, box_warp: float = 1.0,
          implementation: str | None = None, dtype=jnp.float32, chunk_rays: int | str | None = "auto"):
  """Field evaluation + MipRayMarcher2 at the given depths [B,N,S] -> (rgb [B,N,32], depth [B,N], weights).

  `decoder` with `mlp_params()` (r3p OSGDecoder) goes through the fused op `api.ray_march` (XLA or Pallas);
  any other callable feat [B,M,32] -> (sigma, rgb) runs the same reference maths with the callable in place of
  the OSG MLP (XLA only).
  """
  if hasattr(decoder, "mlp_params"):
    rgb, depth, w = api.ray_march(planes, decoder.mlp_params(), origins, directions, depths, box_warp=box_warp,
                                  implementation=implementation, dtype=dtype, chunk_rays=chunk_rays)
  else:
    if implementation == "pallas":
      raise ValueError("implementation='pallas' needs a decoder with mlp_params() (OSGDecoder), "
                       f"got {type(decoder).__name__}")
    if chunk_rays == "auto":
      chunk_rays = api.AUTO_CHUNK_RAYS.get(jax.devices()[0].platform)
    rgb, depth, w = base.ray_march_reference(planes, None, origins, directions, depths, box_warp=box_warp,
                                             dtype=dtype, decoder=decoder, chunk_rays=chunk_rays)
  return rgb, base.clamp_depth(depth, depths), w


def field(planes: Array, decoder: Callable, origins: Array, directions: Array, depths: Array, *,
          box_warp: float = 1.0, dtype=jnp.float32) -> tuple[Array, Array]:
  """Unfused field evaluation (colors [B,N,S,32], densities [B,N,S]) with the same code as the op (for traces)."""
  if hasattr(decoder, "mlp_params"):
    return base.field(planes, decoder.mlp_params(), origins, directions, depths, box_warp=box_warp, dtype=dtype)
  return base.field(planes, None, origins, directions, depths, box_warp=box_warp, dtype=dtype, decoder=decoder)
