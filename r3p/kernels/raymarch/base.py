"""Reference (spec of record) of the fused ray-marching op, in plain jnp; also the `implementation='xla'` backend
and the backward of the custom VJP.

The op, per ray r with sample depths z[r, 0..S-1] (sorted):
  points  p_s = o_r + z_s · d_r                                   (world units)
  feature f_s = mean over the 3 planes of bilinear(plane, proj(p_s))   (r3p.render.triplane)
  (σ_s, c_s) = OSG MLP(f_s)                                       (32 -> 64 -> softplus -> 33)
  then MipRayMarcher2 compositing (MODEL.md §2.8), `composite` below.

Outputs rgb [.., 32] (already mapped ×2−1), depth [..] (the expected depth with NaN -> +inf, NOT yet clamped:
the official clamp uses min/max over the whole depth tensor of all rays and batch items, a global reduction that
is applied by the caller, `r3p.render.raymarch`, so that this op stays per-ray and shardable), and the
per-interval weights [.., S-1].

Precision: fp32 with `Precision.HIGHEST` matmuls (parity). With `dtype=bfloat16` the feature gather and the MLP
run in bf16 (fp32 accumulation); the compositing (transmittance cumprod, sums, depth) always runs in fp32.
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from r3p.nn.numerics import tree_sum
from r3p.render import triplane

Array = jax.Array

# Constants of the official code (MODEL.md §3.4).
SOFTPLUS_THRESHOLD = 20.0   # torch.nn.Softplus(beta=1, threshold=20)
TRANSMITTANCE_EPS = 1e-10   # MipRayMarcher2: cumprod(1 - alpha + 1e-10)
RGB_CLAMP_EPS = 0.001       # OSGDecoder: sigmoid(x)·(1 + 2·0.001) − 0.001


def softplus(x: Array) -> Array:
  """torch Softplus(beta=1, threshold=20): x above the threshold is returned as is."""
  return jnp.where(x > SOFTPLUS_THRESHOLD, x, jnp.log1p(jnp.exp(jnp.minimum(x, SOFTPLUS_THRESHOLD))))


def _precision(dtype):
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT


def osg_mlp(params: Mapping[str, Array], feat: Array, *, dtype=jnp.float32) -> tuple[Array, Array]:
  """OSGDecoder MLP with effective (gain-folded) weights: feat [..., 32] -> (sigma [..., 1], rgb [..., 32]).

  params: w0 [32, 64], b0 [64], w1 [64, 33], b1 [33] (JAX [in, out] layout, equalised-LR gains already applied,
  see `r3p.models.decoder.OSGDecoder.mlp_params`). Matmuls accumulate in fp32; outputs are fp32.
  """
  prec = _precision(dtype)
  # fp32: plain fp32 dots at HIGHEST; bf16: bf16 operands with fp32 accumulation.
  pet = None if jnp.dtype(dtype) == jnp.float32 else jnp.float32
  x = feat.astype(dtype)
  h = jnp.matmul(x, params["w0"].astype(dtype), precision=prec, preferred_element_type=pet)
  h = softplus(h + params["b0"].astype(jnp.float32))
  y = jnp.matmul(h.astype(dtype), params["w1"].astype(dtype), precision=prec, preferred_element_type=pet)
  y = y + params["b1"].astype(jnp.float32)
  rgb = jax.nn.sigmoid(y[..., 1:]) * (1 + 2 * RGB_CLAMP_EPS) - RGB_CLAMP_EPS
  return y[..., 0:1], rgb


def alpha_transmittance(densities: Array, depths: Array) -> tuple[Array, Array]:
  """Per-interval opacity and exclusive transmittance of MipRayMarcher2: [..., S] -> (alpha, T), each [..., S-1].

  sigma = softplus(mid(s) − 1), alpha = 1 − exp(−sigma·δ), T_i = Π_{j<i} (1 − alpha_j + 1e-10), T_0 = 1
  (the 1e-10 keeps T from reaching exactly 0, as officially).
  """
  deltas = depths[..., 1:] - depths[..., :-1]
  dens_mid = (densities[..., :-1] + densities[..., 1:]) / 2
  sigma = softplus(dens_mid - 1)
  alpha = 1 - jnp.exp(-(sigma * deltas))
  shifted = jnp.concatenate([jnp.ones_like(alpha[..., :1]), 1 - alpha + TRANSMITTANCE_EPS], axis=-1)
  return alpha, jnp.cumprod(shifted, axis=-1)[..., :-1]


def expected_depth(weighted_depth_sum: Array, weight_total: Array) -> Array:
  """Σ w·z_mid / Σ w, with the official nan_to_num(nan=inf) for Σ w = 0 (later clamped to the max depth).

  Division through a where() so that rays with zero total weight also get finite (zero) gradients; the
  forward values equal the official ones."""
  ok = weight_total > 0
  return jnp.where(ok, weighted_depth_sum / jnp.where(ok, weight_total, 1.0), jnp.inf)


def composite(colors: Array, densities: Array, depths: Array) -> tuple[Array, Array, Array]:
  """MipRayMarcher2.run_forward without the global depth clamp (MODEL.md §2.8). fp32 throughout.

  Args:
    colors: [..., S, C] decoder colours (sigmoid range).
    densities: [..., S] raw sigma (before softplus).
    depths: [..., S] sample depths along the ray (world units).
  Returns:
    rgb [..., C] = Σ w·c_mid, then ×2 − 1; depth [...] = Σ w·z_mid / Σ w, +inf where Σ w = 0 (unclamped);
    weights [..., S-1] per interval.
  """
  colors = colors.astype(jnp.float32)
  densities = densities.astype(jnp.float32)
  depths = depths.astype(jnp.float32)
  colors_mid = (colors[..., :-1, :] + colors[..., 1:, :]) / 2
  depths_mid = (depths[..., :-1] + depths[..., 1:]) / 2
  alpha, trans = alpha_transmittance(densities, depths)
  weights = alpha * trans
  # Σ_s w·c_mid as a batched mat-vec (XLA CPU reduces a middle axis slowly); fp32 at HIGHEST.
  rgb = jnp.einsum("...s,...sc->...c", weights, colors_mid, precision=jax.lax.Precision.HIGHEST)
  # Fixed-order sums (r3p.nn.numerics): a plain reduce over the samples rounds differently per batch size on
  # XLA:CPU, which made the 8-device sharded depth differ from the 1-device one.
  depth = expected_depth(tree_sum(weights * depths_mid, -1), tree_sum(weights, -1))
  return rgb * 2 - 1, depth, weights


def clamp_depth(depth: Array, depths: Array) -> Array:
  """The official clamp of the composite depth to [min(depths), max(depths)] over the WHOLE depth tensor
  (all rays and all batch items; an EG3D quirk kept for parity)."""
  return jnp.clip(depth, jnp.min(depths), jnp.max(depths))


def sample_points(origins: Array, directions: Array, depths: Array) -> Array:
  """[B,N,3], [B,N,3], [B,N,S] -> [B,N·S,3] points p = o + z·d (official `sample_coordinates`)."""
  b, n, s = depths.shape
  p = origins[:, :, None, :] + depths[..., None] * directions[:, :, None, :]
  return p.reshape(b, n * s, 3)


def field(planes: Array, params, origins: Array, directions: Array, depths: Array, *, box_warp: float = 1.0,
          dtype=jnp.float32, decoder: Callable | None = None) -> tuple[Array, Array]:
  """Tri-plane lookup + decoder at every sample: (colors [B,N,S,32], densities [B,N,S]) in fp32.

  `decoder` (feat [B,M,32] -> (sigma [B,M,1], rgb [B,M,32])) replaces the OSG MLP when given (params unused).
  """
  b, n, s = depths.shape
  pts = sample_points(origins.astype(jnp.float32), directions.astype(jnp.float32), depths.astype(jnp.float32))
  feat = triplane.sample_mean(planes, pts, box_warp, dtype=dtype)
  if decoder is None:
    sigma, rgb = osg_mlp(params, feat, dtype=dtype)
  else:
    sigma, rgb = decoder(feat)
  return (rgb.astype(jnp.float32).reshape(b, n, s, rgb.shape[-1]),
          sigma.astype(jnp.float32).reshape(b, n, s))


def ray_march_reference(planes: Array, params, origins: Array, directions: Array, depths: Array, *,
                        box_warp: float = 1.0, dtype=jnp.float32, decoder: Callable | None = None,
                        chunk_rays: int | None = None) -> tuple[Array, Array, Array]:
  """The fused op in jnp: planes [B,3,H,W,C], params (see `osg_mlp`), origins/directions [B,N,3],
  depths [B,N,S] -> (rgb [B,N,32], depth [B,N] unclamped, weights [B,N,S-1]).

  chunk_rays: evaluate N in chunks of this many rays (lax.map) to bound the [B·chunk·S, 64] activations;
  N is padded internally. None = all rays at once.
  """
  def one(o, d, z):
    colors, dens = field(planes, params, o, d, z, box_warp=box_warp, dtype=dtype, decoder=decoder)
    return composite(colors, dens, z)

  b, n, s = depths.shape
  if chunk_rays is None or chunk_rays >= n:
    return one(origins, directions, depths)
  nc = -(-n // chunk_rays)
  pad = nc * chunk_rays - n

  def split(x):
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((b, nc, chunk_rays) + x.shape[2:]), 1, 0)

  rgb, depth, w = jax.lax.map(lambda a: one(*a), (split(origins), split(directions), split(depths)))

  def merge(x):
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape((b, nc * chunk_rays) + x.shape[3:])[:, :n]

  return merge(rgb), merge(depth), merge(w)


@functools.partial(jax.jit, static_argnames=("box_warp", "dtype", "chunk_rays"))
def ray_march_reference_jit(planes, params, origins, directions, depths, *, box_warp=1.0, dtype=jnp.float32,
                            chunk_rays=None):
  """Jitted `ray_march_reference` (static box_warp/dtype/chunking) for the OSG MLP."""
  return ray_march_reference(planes, params, origins, directions, depths, box_warp=box_warp, dtype=dtype,
                             chunk_rays=chunk_rays)
