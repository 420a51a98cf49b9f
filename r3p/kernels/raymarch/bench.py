"""Benchmark / sanity sweep of the fused ray-march op: `python -m r3p.kernels.raymarch.bench [--full] ...`.

For each implementation × dtype × batch × samples-per-ray (coarse 48, merged 96) it prints the compile time,
the median run time, effective bandwidth over the predicted bytes, FLOP/s, the executable's peak memory
(arguments + outputs + temporaries from `memory_analysis()`) and max|Δ| against the fp32 XLA reference.

Bytes: `fused_bytes` (analytic; what the Pallas kernel must move: rays in, rgb/depth/weights out, planes once
per item) and, for XLA, `bytes accessed` from the compiled executable's cost analysis (XLA's own estimate for
the device it runs on). On CPU the default is a reduced image (--resolution 32); `--full` uses 128² rays.
The Pallas path runs in interpret mode off-GPU, so its CPU timings say nothing about the GPU kernel.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from r3p.kernels.raymarch import api, base, pallas_triton

PLANE_SHAPE = (3, 256, 256, 32)   # per batch item, r3p layout
MLP_FLOPS_PER_SAMPLE = 2 * (32 * 64 + 64 * 33)
LOOKUP_FLOPS_PER_SAMPLE = 3 * 4 * 32 * 2 + 3 * 32   # 12 weighted taps + plane mean


def flops(batch, rays, samples):
  return batch * rays * samples * (MLP_FLOPS_PER_SAMPLE + LOOKUP_FLOPS_PER_SAMPLE)


def fused_bytes(batch, rays, samples, feat_bytes=4):
  """Compulsory HBM bytes of one fused call: planes read once per item (they fit in L2 on H100/H200, 25 MB in
  fp32), rays (o, d fp32 + depths), outputs (rgb 32 + depth + S−1 weights, fp32)."""
  planes = batch * int(np.prod(PLANE_SHAPE)) * feat_bytes
  rays_in = batch * rays * (6 + samples) * 4
  out = batch * rays * (32 + 1 + samples - 1) * 4
  return planes + rays_in + out


def gather_bytes(batch, rays, samples, feat_bytes=4):
  """Upper bound of plane-gather traffic (no cache reuse): 12 rows of 32 features per sample."""
  return batch * rays * samples * 12 * 32 * feat_bytes


def make_args(batch, rays, samples, seed=0):
  from flax import nnx
  from r3p.models.decoder import OSGDecoder
  k = jax.random.split(jax.random.key(seed), 4)
  planes = jax.random.normal(k[0], (batch,) + PLANE_SHAPE, jnp.float32)
  params = OSGDecoder(rngs=nnx.Rngs(seed)).mlp_params()
  origins = jnp.broadcast_to(jnp.array([0.0, 0.006, 2.861]), (batch, rays, 3))
  d = jax.random.normal(k[1], (batch, rays, 3)) * 0.1 + jnp.array([0.0, 0.0, -1.0])
  d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
  z = jnp.sort(jax.random.uniform(k[2], (batch, rays, samples), minval=2.36, maxval=3.4), axis=-1)
  return planes, params, origins, d, z


def run_one(impl, dtype, batch, rays, samples, repeats, chunk_rays="auto"):
  args = make_args(batch, rays, samples)
  fn = jax.jit(lambda *a: api.ray_march(*a, implementation=impl, dtype=dtype, chunk_rays=chunk_rays))
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  peak = None
  if mem is not None:
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - getattr(mem, "alias_size_in_bytes", 0))
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_bytes = float(cost.get("bytes accessed", float("nan"))) if cost else float("nan")
  out = jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  ms = statistics.median(times) * 1e3
  ref = jax.jit(base.ray_march_reference)(*args)
  err = max(float(jnp.max(jnp.abs(jnp.where(jnp.isfinite(r), o - r, 0.0)))) for o, r in zip(out, ref))
  fb = 2 if dtype == jnp.bfloat16 else 4
  nbytes = fused_bytes(batch, rays, samples, fb) if impl == "pallas" else xla_bytes
  return dict(impl=impl, dtype=jnp.dtype(dtype).name, batch=batch, rays=rays, samples=samples,
              compile_s=compile_s, ms=ms, gbps=nbytes / (ms * 1e-3) / 1e9, bytes=nbytes,
              gflops=flops(batch, rays, samples) / (ms * 1e-3) / 1e9,
              peak_mb=(peak / 2**20) if peak is not None else float("nan"), max_err=err)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
  p.add_argument("--samples", type=int, nargs="+", default=[48, 96])
  p.add_argument("--impl", nargs="+", default=["xla", "pallas"], choices=["xla", "pallas"])
  p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
  p.add_argument("--resolution", type=int, default=None, help="rays per side (default 128 on GPU, 32 on CPU)")
  p.add_argument("--full", action="store_true", help="128² rays even on CPU")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--chunk-rays", default="auto", help="XLA path: rays per chunk, 'auto' or 'none'")
  p.add_argument("--predict", action="store_true", help="only print the predicted bytes/FLOPs per frame")
  a = p.parse_args(argv)
  a.chunk_rays = None if a.chunk_rays == "none" else (a.chunk_rays if a.chunk_rays == "auto" else int(a.chunk_rays))
  dev = jax.devices()[0]
  res = a.resolution or (128 if (a.full or dev.platform != "cpu") else 32)
  rays = res * res
  print(f"# device: {dev.platform} {dev.device_kind}; rays/image {rays}; pallas compiled: "
        f"{pallas_triton.supported_on(dev)} (else interpret mode)")
  if a.predict:
    for b in a.batch:
      for s in a.samples:
        print(f"B={b:3d} S={s:3d}: fused compulsory {fused_bytes(b, rays, s) / 1e6:9.1f} MB, gather upper bound "
              f"{gather_bytes(b, rays, s) / 1e9:7.2f} GB, {flops(b, rays, s) / 1e9:7.2f} GFLOP")
    return
  hdr = (f"{'impl':7s} {'dtype':9s} {'B':>3s} {'rays':>6s} {'S':>3s} {'compile_s':>9s} {'ms':>9s} "
         f"{'GB/s':>8s} {'GFLOP/s':>8s} {'peak_MB':>8s} {'max|Δ|':>9s}")
  print(hdr)
  for impl in a.impl:
    for dt in a.dtype:
      for b in a.batch:
        for s in a.samples:
          r = run_one(impl, getattr(jnp, dt), b, rays, s, a.repeats, a.chunk_rays)
          print(f"{r['impl']:7s} {r['dtype']:9s} {r['batch']:3d} {r['rays']:6d} {r['samples']:3d} "
                f"{r['compile_s']:9.2f} {r['ms']:9.2f} {r['gbps']:8.2f} {r['gflops']:8.2f} {r['peak_mb']:8.1f} "
                f"{r['max_err']:9.2e}", flush=True)


if __name__ == "__main__":
  main()
