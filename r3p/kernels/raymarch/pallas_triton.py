"""Pallas kernel of the fused ray-marching op (tri-plane lookup + OSG MLP + MipRayMarcher2), GPU via the
Triton lowering; runs on CPU with `interpret=True` (how it is tested here).

Why Triton and not Mosaic GPU: every sample gathers 12 data-dependent rows (4 bilinear corners × 3 planes) of
the 25 MB per-item tri-plane. Mosaic GPU moves dense tiles (TMA, GMEM->SMEM) and has no per-lane gather from
global memory; the Triton lowering turns `ref[int_vector, :]` into a pointer gather. The backend is deprecated
in JAX 0.11, so it is isolated here behind `api.py` (STYLE.md §9.6). TPU note: Mosaic TPU cannot gather rows
from an HBM ref per lane either; a TPU version would DMA each ray block's plane footprint (rays of a block are
spatially coherent) into VMEM, or do the lookup as a one-hot matmul on the MXU. Not written.

Tiling: grid (batch, ray blocks). A program owns `block_rays` rays and walks their samples in order (fori_loop
over S), carrying the previous sample's (depth, sigma, colour), the transmittance and the running sums, so no
per-sample tensor ever goes to HBM: inputs are the rays (o, d: 12 B each, depths 4·S B) and the planes,
outputs rgb (128 B), depth (4 B) and the per-interval weights (4·(S−1) B, needed by importance sampling).
The MLP is two [block_rays, 32]×[32, 64] / [.., 64]×[64, 33] dots per sample with fp32 accumulation.
Status: forward checked in interpret mode only; GPU compilation/timing not yet run (no GPU in the session that
wrote it).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from r3p.kernels.raymarch import base
from r3p.render import triplane


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
  """Static kernel parameters."""
  block_rays: int = 128
  """Rays per program (a power of two >= 16: the Triton block and the M dim of the MLP dots)."""
  num_warps: int = 4
  """Triton warps per program."""
  num_stages: int = 1
  """Triton software-pipelining stages (the sample loop is sequential; 1 is the natural value)."""

  def __post_init__(self):
    if self.block_rays < 16 or self.block_rays & (self.block_rays - 1):
      raise ValueError(f"{self.block_rays=} must be a power of two >= 16")
    if self.num_warps < 1 or self.num_warps & (self.num_warps - 1):
      raise ValueError(f"{self.num_warps=} must be a power of two")
    if self.num_stages < 1:
      raise ValueError(f"{self.num_stages=} must be >= 1")


def get_default_config(n_rays: int, n_samples: int, dtype=jnp.float32, device_kind: str | None = None,
                       interpret: bool = False) -> Config:
  """Heuristic defaults (no tuned table yet: `tuned.py` is to be filled from `bench.py` on a GPU)."""
  del n_samples, dtype, device_kind
  if interpret:  # fewer, larger programs: the interpreter's cost is per grid step
    return Config(block_rays=min(1024, max(16, pl.next_power_of_2(n_rays))))
  return Config(block_rays=128 if n_rays >= 128 else max(16, pl.next_power_of_2(n_rays)))


def supported_on(device) -> bool:
  """Devices where the compiled (non-interpret) kernel can run: NVIDIA GPUs (Triton lowering)."""
  return device.platform in ("gpu", "cuda") and "nvidia" in str(getattr(device, "device_kind", "")).lower()


def _raymarch_kernel(planes_ref, w0_ref, b0_ref, w1_ref, b1_ref, o_ref, d_ref, z_ref,
                     rgb_ref, depth_ref, w_ref, *, n_samples, n_planes, height, width, box_warp, dtype):
  hw = height * width
  o = o_ref[0].astype(jnp.float32)          # [R, 3]
  d = d_ref[0].astype(jnp.float32)
  params = {"w0": w0_ref[...], "b0": b0_ref[...], "w1": w1_ref[...], "b1": b1_ref[...]}

  def field(z):                              # z [R] -> (sigma [R], colour [R, C])
    p = o + z[:, None] * d
    rows, cols, ws = triplane.corner_taps(triplane.project(p, box_warp), height, width)   # [R, 3, 4]
    total = None
    for k in range(n_planes):
      acc = None
      for t in range(4):
        v = planes_ref[0, k * hw + rows[:, k, t] * width + cols[:, k, t], :].astype(dtype)
        v = v * ws[:, k, t, None].astype(dtype)
        acc = v if acc is None else acc + v
      total = acc if total is None else total + acc
    sigma, rgb = base.osg_mlp(params, total / n_planes, dtype=dtype)
    return sigma[:, 0], rgb

  z0 = z_ref[0, :, 0].astype(jnp.float32)
  s0, c0 = field(z0)
  zeros = jnp.zeros_like(z0)

  def body(i, carry):
    z_prev, s_prev, c_prev, trans, acc_rgb, acc_wz, acc_w = carry
    z = z_ref[0, :, i].astype(jnp.float32)
    s, c = field(z)
    delta = z - z_prev
    sigma = base.softplus((s_prev + s) / 2 - 1)
    alpha = 1 - jnp.exp(-(sigma * delta))
    w = alpha * trans
    w_ref[0, :, i - 1] = w
    trans = trans * (1 - alpha + base.TRANSMITTANCE_EPS)
    acc_rgb = acc_rgb + w[:, None] * ((c_prev + c) / 2)
    acc_wz = acc_wz + w * ((z_prev + z) / 2)
    return z, s, c, trans, acc_rgb, acc_wz, acc_w + w

  init = (z0, s0, c0, jnp.ones_like(z0), jnp.zeros_like(c0), zeros, zeros)
  _, _, _, _, acc_rgb, acc_wz, acc_w = jax.lax.fori_loop(1, n_samples, body, init)
  rgb_ref[0] = (acc_rgb * 2 - 1).astype(rgb_ref.dtype)
  depth_ref[0] = base.expected_depth(acc_wz, acc_w)


@functools.partial(jax.jit, static_argnames=("box_warp", "dtype", "config", "interpret", "debug"))
def ray_march_pallas(planes, params, origins, directions, depths, *, box_warp: float = 1.0, dtype=jnp.float32,
                     config: Config | None = None, interpret: bool = False, debug: bool = False):
  """Forward of the fused op (see `base.ray_march_reference` for the contract). N is padded to the block."""
  b, n_planes, h, w, c = planes.shape
  _, n, s = depths.shape
  if s < 2:
    raise ValueError(f"{s=} samples per ray: the marcher needs at least 2")
  cfg = config or get_default_config(n, s, dtype, interpret=interpret)
  br = cfg.block_rays
  n_pad = -(-n // br) * br
  pad = n_pad - n
  if pad:
    # Padded rays: zero depths -> zero deltas -> alpha 0; their outputs are dropped below.
    origins = jnp.pad(origins, ((0, 0), (0, pad), (0, 0)))
    directions = jnp.pad(directions, ((0, 0), (0, pad), (0, 0)))
    depths = jnp.pad(depths, ((0, 0), (0, pad), (0, 0)))
  flat = planes.astype(dtype).reshape(b, n_planes * h * w, c)
  p32 = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  c_out = p32["b1"].shape[0] - 1
  kernel = functools.partial(_raymarch_kernel, n_samples=s, n_planes=n_planes, height=h, width=w,
                             box_warp=box_warp, dtype=dtype)
  full = lambda x: pl.BlockSpec(x.shape, lambda bi, ri: (0,) * x.ndim)
  compiler_params = None
  if not interpret:
    from jax.experimental.pallas import triton as pltriton
    compiler_params = pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
  rgb, depth, wts = pl.pallas_call(
      kernel,
      grid=(b, n_pad // br),
      in_specs=[
          pl.BlockSpec((1, n_planes * h * w, c), lambda bi, ri: (bi, 0, 0)),
          full(p32["w0"]), full(p32["b0"]), full(p32["w1"]), full(p32["b1"]),
          pl.BlockSpec((1, br, 3), lambda bi, ri: (bi, ri, 0)),
          pl.BlockSpec((1, br, 3), lambda bi, ri: (bi, ri, 0)),
          pl.BlockSpec((1, br, s), lambda bi, ri: (bi, ri, 0)),
      ],
      out_specs=[
          pl.BlockSpec((1, br, c_out), lambda bi, ri: (bi, ri, 0)),
          pl.BlockSpec((1, br), lambda bi, ri: (bi, ri)),
          pl.BlockSpec((1, br, s - 1), lambda bi, ri: (bi, ri, 0)),
      ],
      out_shape=[
          jax.ShapeDtypeStruct((b, n_pad, c_out), jnp.float32),
          jax.ShapeDtypeStruct((b, n_pad), jnp.float32),
          jax.ShapeDtypeStruct((b, n_pad, s - 1), jnp.float32),
      ],
      interpret=interpret, debug=debug, compiler_params=compiler_params, name="r3p_raymarch",
  )(flat, p32["w0"], p32["b0"], p32["w1"], p32["b1"], origins.astype(jnp.float32),
    directions.astype(jnp.float32), depths.astype(jnp.float32))
  return rgb[:, :n], depth[:, :n], wts[:, :n]
