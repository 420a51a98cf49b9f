"""EG3D ImportanceRenderer + RaySampler as used by Real3D-Portrait (MODEL.md §2.4–§2.10).

Pipeline per batch: camera -> rays (R² per item) -> box near/far (with the invalid-ray quirk) -> 48 stratified
depths (draw #1) -> coarse march (weights only) -> 48 importance depths (draw #2) -> merge + sort the 96 depths
-> march -> feature/depth/weight images.

The fused op re-evaluates the field at all 96 merged depths instead of gathering the stored coarse colours
(`unify_samples`): the values are the same function of the same points, and nothing per-sample has to go through
memory between the passes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from r3p.nn.numerics import tree_sum
from r3p.render import bounds
from r3p.render import cameras
from r3p.render import raymarch
from r3p.render import sampling

Array = jax.Array


def _check(planes: Array, camera: Array):
  if planes.ndim != 5 or planes.shape[1] != 3:
    raise ValueError(f"planes must be r3p layout [B,3,H,W,C] (use r3p.models.planes.planes_from_torch for "
                     f"[B,3,C,H,W]), got shape {planes.shape}")
  if camera.ndim != 2 or camera.shape[-1] != 25 or camera.shape[0] != planes.shape[0]:
    raise ValueError(f"camera must be [B,25] with B={planes.shape[0]}, got shape {camera.shape}")


def draws(key: Array | None, batch: int, n_rays: int, n_coarse: int, n_fine: int,
          coarse_jitter: Array | None = None, importance_u: Array | None = None) -> tuple[Array, Array]:
  """The two renderer draws, taken from `key` when not given: key -> split in two; the first subkey draws the
  stratified jitter [B,N,n_coarse], the second the importance uniforms [B·N, n_fine] (both U[0,1) fp32)."""
  if coarse_jitter is None or importance_u is None:
    if key is None:
      raise ValueError("render needs `key` (a typed jax.random.key) when coarse_jitter/importance_u are not given")
    k_coarse, k_fine = jax.random.split(key)
    if coarse_jitter is None:
      coarse_jitter = jax.random.uniform(k_coarse, (batch, n_rays, n_coarse), jnp.float32)
    if importance_u is None:
      importance_u = jax.random.uniform(k_fine, (batch * n_rays, n_fine), jnp.float32)
  if coarse_jitter.ndim == 4:  # the fixture's [B,N,S,1]
    coarse_jitter = coarse_jitter[..., 0]
  if coarse_jitter.shape != (batch, n_rays, n_coarse):
    raise ValueError(f"coarse_jitter must be [{batch},{n_rays},{n_coarse}], got {coarse_jitter.shape}")
  if importance_u.shape != (batch * n_rays, n_fine):
    raise ValueError(f"importance_u must be [{batch * n_rays},{n_fine}] (batch-major), got {importance_u.shape}")
  return coarse_jitter.astype(jnp.float32), importance_u.astype(jnp.float32)


def render(planes: Array, decoder, camera: Array, *, key: Array | None = None, coarse_jitter: Array | None = None,
           importance_u: Array | None = None, resolution: int = 128, n_coarse: int = 48, n_fine: int = 48,
           box_warp: float = 1.0, implementation: str | None = None, dtype=jnp.float32,
           chunk_rays: int | str | None = "auto") -> dict[str, Array]:
  """Render the raw feature image of a tri-plane.

  Args:
    planes: [B,3,H,W,C] tri-planes (r3p layout), C = 32.
    decoder: `OSGDecoder` (fused path) or any callable feat [B,M,32] -> (sigma [B,M,1], rgb [B,M,32]).
    camera: [B,25] EG3D camera vectors.
    key: typed key for the draws that are not given (split in two: jitter, importance).
    coarse_jitter: [B,R²,n_coarse] stratified jitter (draw #1); [B,R²,n_coarse,1] is accepted.
    importance_u: [B·R², n_fine] importance uniforms (draw #2), rays batch-major.
    resolution: R, rays per image side.
    implementation: None (Pallas where supported, else XLA) | 'xla' | 'pallas' for the fused op.
    dtype: compute dtype of the feature gather + MLP (compositing stays fp32).
    chunk_rays: XLA path only; evaluate rays in chunks of this size to bound memory ("auto": 1024 rays on
      CPU, one chunk elsewhere; None: one chunk).
  Returns:
    feature_image [B,R,R,32] (channels 0..2 = unclamped RGB, the official `rgb_image`), depth_image [B,R,R,1],
    weights_image [B,R,R,1] (accumulated opacity).
  """
  _check(planes, camera)
  b = planes.shape[0]
  n = resolution * resolution
  jitter, u = draws(key, b, n, n_coarse, n_fine, coarse_jitter, importance_u)
  origins, dirs = cameras.camera_rays(camera, resolution)
  start, end, _ = bounds.ray_start_end(origins, dirs, box_warp)
  z_coarse = sampling.stratified(start, end, n_coarse, jitter)
  kw = dict(box_warp=box_warp, implementation=implementation, dtype=dtype, chunk_rays=chunk_rays)
  _, _, w_coarse = raymarch.march(planes, decoder, origins, dirs, z_coarse, **kw)
  z_fine = sampling.importance(z_coarse, w_coarse, u)
  (z_all,) = sampling.unify(z_coarse, z_fine)
  rgb, depth, w = raymarch.march(planes, decoder, origins, dirs, z_all, **kw)
  shape = (b, resolution, resolution)
  return {
      "feature_image": rgb.reshape(shape + (rgb.shape[-1],)),
      "depth_image": depth.reshape(shape + (1,)),
      "weights_image": tree_sum(w, -1).reshape(shape + (1,)),  # fixed order: same bits at any batch size
  }


def render_trace(planes: Array, decoder, camera: Array, *, coarse_jitter: Array, importance_u: Array,
                 resolution: int = 128, n_coarse: int = 48, n_fine: int = 48, box_warp: float = 1.0,
                 dtype=jnp.float32) -> dict[str, Array]:
  """The official unfused pipeline (stores coarse colours, gathers them in `unify`), returning every
  intermediate: for debugging and component parity. Same maths as `render` (same functions)."""
  _check(planes, camera)
  b = planes.shape[0]
  n = resolution * resolution
  jitter, u = draws(None, b, n, n_coarse, n_fine, coarse_jitter, importance_u)
  t = {}
  t["cam2world"], t["intrinsics"] = c2w, k = cameras.split_camera(camera)
  t["origins"], t["directions"] = origins, dirs = cameras.ray_sampler(c2w, k, resolution)
  t["t_min"], t["t_max"] = bounds.ray_limits_box(origins, dirs, box_warp)
  start, end, t["is_valid"] = bounds.ray_start_end(origins, dirs, box_warp)
  t["depths_coarse"] = z_c = sampling.stratified(start, end, n_coarse, jitter)
  from r3p.kernels.raymarch import base
  from r3p.render import triplane
  t["points_coarse"] = pts = base.sample_points(origins, dirs, z_c)
  t["features_coarse"] = triplane.sample_planes(planes, pts, box_warp, dtype=dtype)
  t["colors_coarse"], t["densities_coarse"] = c_c, s_c = raymarch.field(planes, decoder, origins, dirs, z_c,
                                                                       box_warp=box_warp, dtype=dtype)
  t["rgb_coarse"], t["depth_coarse"], t["weights_coarse"] = raymarch.mip_ray_marcher(c_c, s_c, z_c)
  t["pdf_bins"] = 0.5 * (z_c[..., :-1] + z_c[..., 1:]).reshape(b * n, n_coarse - 1)
  t["pdf_weights"] = sampling.importance_weights(t["weights_coarse"].reshape(b * n, n_coarse - 1))[:, 1:-1]
  t["depths_fine"] = z_f = sampling.importance(z_c, t["weights_coarse"], u)
  t["points_fine"] = pts = base.sample_points(origins, dirs, z_f)
  t["features_fine"] = triplane.sample_planes(planes, pts, box_warp, dtype=dtype)
  t["colors_fine"], t["densities_fine"] = c_f, s_f = raymarch.field(planes, decoder, origins, dirs, z_f,
                                                                   box_warp=box_warp, dtype=dtype)
  t["depths_all"], t["colors_all"], t["densities_all"] = z_a, c_a, s_a = sampling.unify(
      z_c, z_f, (c_c, c_f), (s_c, s_f))
  t["rgb"], t["depth"], t["weights"] = raymarch.mip_ray_marcher(c_a, s_a, z_a)
  t["weights_sum"] = jnp.sum(t["weights"], axis=-1)
  return t
