"""Public entry of the fused ray-marching op: `ray_march(..., implementation=None|'xla'|'pallas')`.

- 'xla': `base.ray_march_reference` (plain jnp; differentiable as is).
- 'pallas': `pallas_triton.ray_march_pallas` under a `jax.custom_vjp` whose backward is the VJP of the reference
  (recompute in XLA; the jax Pallas ops' `backward_pass_impl='xla'`). On a device without a compiled backend
  (CPU) the kernel runs in interpret mode.
- None: Pallas where `pallas_triton.supported_on(device)` and the backend is marked validated in
  `VALIDATED_PLATFORMS`, else XLA (automatic fallback). No platform is validated yet: the GPU kernel has not
  been compiled/timed (no GPU in the session that wrote it), so None currently means XLA everywhere.

`ray_march_sharded` wraps the op in `jax.shard_map` with rays split over a mesh axis (Pallas calls are not
auto-partitioned); planes and MLP weights are replicated.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from r3p.kernels.raymarch import base
from r3p.kernels.raymarch import pallas_triton

IMPLEMENTATIONS = (None, "xla", "pallas")
# Platforms on which implementation=None picks Pallas (add "gpu" once bench.py + tests pass compiled on a GPU).
VALIDATED_PLATFORMS: frozenset[str] = frozenset()


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _pallas_op(planes, params, origins, directions, depths, box_warp, dtype, config, interpret):
  return pallas_triton.ray_march_pallas(planes, params, origins, directions, depths, box_warp=box_warp,
                                        dtype=dtype, config=config, interpret=interpret)


def _pallas_fwd(planes, params, origins, directions, depths, box_warp, dtype, config, interpret):
  out = _pallas_op(planes, params, origins, directions, depths, box_warp, dtype, config, interpret)
  return out, (planes, params, origins, directions, depths)


def _pallas_bwd(box_warp, dtype, config, interpret, res, g):
  del config, interpret
  ref = functools.partial(base.ray_march_reference, box_warp=box_warp, dtype=dtype)
  _, vjp = jax.vjp(ref, *res)
  return vjp(g)


_pallas_op.defvjp(_pallas_fwd, _pallas_bwd)


def _default_device():
  return jax.devices()[0]


def resolve_implementation(implementation: str | None, device=None) -> str:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
  if implementation is not None:
    return implementation
  device = device or _default_device()
  if device.platform in VALIDATED_PLATFORMS and pallas_triton.supported_on(device):
    return "pallas"
  return "xla"


# XLA path on CPU: chunks of rays keep the per-sample activations cache-sized (measured 1.4x faster and 5x less
# temporary memory than one chunk for a 128² render, B=1); on accelerators one chunk.
AUTO_CHUNK_RAYS = {"cpu": 1024}


def ray_march(planes, params, origins, directions, depths, *, box_warp: float = 1.0,
              implementation: str | None = None, dtype=jnp.float32, chunk_rays: int | str | None = "auto",
              config: pallas_triton.Config | None = None, interpret: bool | None = None):
  """Fused tri-plane lookup + OSG MLP + MipRayMarcher2 (depth not yet clamped; see base.py).

  Args:
    planes: [B,3,H,W,C]; params: {w0 [C,64], b0, w1 [64,1+C'], b1} effective MLP weights.
    origins, directions: [B,N,3]; depths: [B,N,S] sorted sample depths.
    implementation: None (auto, XLA fallback) | 'xla' | 'pallas'.
    dtype: gather/MLP compute dtype (fp32 or bf16); compositing is fp32.
    chunk_rays: XLA path: rays per chunk (bounds memory); "auto" = AUTO_CHUNK_RAYS of the platform (1024 on
      CPU, else no chunking); None = no chunking. Ignored by Pallas.
    config: Pallas block config (default: heuristics). interpret: Pallas interpret mode (default: on when the
      device has no compiled Pallas backend).
  Returns:
    rgb [B,N,C'] (×2−1), depth [B,N] (NaN -> inf, unclamped), weights [B,N,S−1].
  """
  if planes.ndim != 5:
    raise ValueError(f"planes must be [B,3,H,W,C], got shape {planes.shape}")
  if depths.ndim != 3 or origins.shape != depths.shape[:2] + (3,) or directions.shape != origins.shape:
    raise ValueError(f"expected origins/directions [B,N,3] and depths [B,N,S], got {origins.shape}, "
                     f"{directions.shape}, {depths.shape}")
  impl = resolve_implementation(implementation)
  if impl == "xla":
    if chunk_rays == "auto":
      chunk_rays = AUTO_CHUNK_RAYS.get(_default_device().platform)
    return base.ray_march_reference(planes, params, origins, directions, depths, box_warp=box_warp, dtype=dtype,
                                    chunk_rays=chunk_rays)
  if interpret is None:
    interpret = not pallas_triton.supported_on(_default_device())
  return _pallas_op(planes, params, origins, directions, depths, float(box_warp), jnp.dtype(dtype).type, config,
                    bool(interpret))


def ray_march_sharded(planes, params, origins, directions, depths, *, mesh, axis="data", **kwargs):
  """`ray_march` under `jax.shard_map`: rays (axis 1 of origins/directions/depths) split over mesh axis `axis`
  (a name or a tuple of names); planes and params replicated. N must divide by the axis size."""
  size = 1
  for a in (axis if isinstance(axis, tuple) else (axis,)):
    size *= mesh.shape[a]
  if depths.shape[1] % size:
    raise ValueError(f"rays {depths.shape[1]=} must be a multiple of the mesh axis size {size} ({axis=})")
  rays = P(None, axis)
  fn = functools.partial(ray_march, **kwargs)
  return jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(), rays, rays, rays), out_specs=(rays, rays, rays),
                       check_vma=False)(planes, params, origins, directions, depths)
