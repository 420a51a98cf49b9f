"""CPU/GPU timing of the r3p network: per-frame forward with cached canonical planes, compile time, peak RSS.

    python -m eval.bench_forward [--batch 1] [--dtype float32|bfloat16] [--repeats 3] [--fixture CASE_DIR]

Without --fixture the model has random weights and random inputs (speed does not depend on the values). With
--fixture (an `r3p_model` case folder) it loads the case's seeded weights, inputs and recorded draws, and also
reports max|Δ| and PSNR of the final image against the official fp32 output (the bf16 quality figure).
The official per-frame figure to compare with: 14.4 s (PyTorch CPU, 2 threads, fp32, B=1; MODEL.md §7).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def random_inputs(batch: int, seed: int = 0):
  """Inputs of the right shapes/ranges (NHWC) and a frontal camera."""
  rng = np.random.default_rng(seed)
  im = lambda c=3: jnp.asarray(rng.uniform(-1, 1, (batch, 512, 512, c)).astype(np.float32))
  seg = np.zeros((batch, 512, 512, 6), np.float32)
  cls = rng.integers(0, 6, (batch, 512, 512))
  np.put_along_axis(seg, cls[..., None], 1.0, axis=-1)
  cam = np.zeros((batch, 25), np.float32)
  c2w = np.diag([1.0, -1.0, -1.0, 1.0]).astype(np.float32)
  c2w[:3, 3] = [0.0, 0.006, 2.861]
  k = np.array([[4.2647, 0, 0.5], [0, 4.2647, 0.5], [0, 0, 1]], np.float32)
  cam[:] = np.concatenate([c2w.reshape(-1), k.reshape(-1)])
  kp = jnp.asarray(np.concatenate([rng.uniform(-1, 1, (batch, 68, 2)), np.zeros((batch, 68, 1))], -1), jnp.float32)
  cond = dict(cond_cano=im(), cond_src=im(), cond_tgt=im(), ref_torso_img=im(), bg_img=im(),
              segmap=jnp.asarray(seg), kp_s=kp, kp_d=kp)
  return im(), jnp.asarray(cam), cond


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m eval.bench_forward", description=__doc__.split("\n\n")[0])
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--fixture", default=None, help="r3p_model case folder (weights, inputs, draws, reference)")
  ap.add_argument("--json", action="store_true")
  args = ap.parse_args(argv)

  from r3p.models import portrait
  from r3p.parity_kinds.r3p_model import draws_from_rng

  dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  t0 = time.perf_counter()
  if args.fixture:
    from r3p.convert.seeded import load_seeded_state_dict
    from r3p.fixture_io import FixtureCase
    case = FixtureCase(args.fixture)
    model = portrait.build(load_seeded_state_dict(args.fixture), dtype=dtype)
    img, camera, cond = portrait.inputs_from_official(case.inputs)
    draws = draws_from_rng(case.rng)
  else:
    model = portrait.build(None, dtype=dtype)
    img, camera, cond = random_inputs(args.batch)
    draws = {"key": jax.random.key(0)}
  build_s = time.perf_counter() - t0
  graphdef, state = nnx.split(model)

  @jax.jit
  def source(state, img, cond):
    m = nnx.merge(graphdef, state)
    return m.source(img, cond["ref_torso_img"], cond["bg_img"], cond["segmap"])

  @jax.jit
  def frame(state, src, camera, cond, draws):
    m = nnx.merge(graphdef, state)
    return m.frame(src, camera, cond["cond_cano"], cond["cond_src"], cond["cond_tgt"], cond["kp_s"], cond["kp_d"],
                   **draws)

  t0 = time.perf_counter()
  src_c = source.lower(state, img, cond).compile()
  src_compile = time.perf_counter() - t0
  t0 = time.perf_counter()
  src = jax.block_until_ready(src_c(state, img, cond))
  src_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  frame_c = frame.lower(state, src, camera, cond, draws).compile()
  frame_compile = time.perf_counter() - t0
  times, cpu = [], []
  out = None
  for _ in range(args.repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(frame_c(state, src, camera, cond, draws))
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)  # CPU seconds of all threads: robust to other load on the machine
  res = {
      "device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "batch": int(camera.shape[0]),
      "dtype": args.dtype, "build_s": round(build_s, 2), "source_compile_s": round(src_compile, 2),
      "source_s": round(src_s, 3), "frame_compile_s": round(frame_compile, 2),
      "frame_s_per_batch": [round(t, 3) for t in times], "frame_s_per_frame": round(min(times) / camera.shape[0], 3),
      "frame_cpu_s_per_frame": round(min(cpu) / camera.shape[0], 3), "cpu_threads": len(os.sched_getaffinity(0)),
      "peak_rss_gb": round(_peak_rss_gb(), 2), "official_cpu_s_per_frame": 14.4,
  }
  if args.fixture:
    pred = portrait.to_official(out)["image"].astype(np.float64)
    ref = np.asarray(case.outputs["image"], np.float64)
    mse = float(np.mean((pred - ref) ** 2))
    res["image_max_abs"] = float(np.abs(pred - ref).max())
    res["image_psnr_db_vs_official_fp32"] = float(10 * np.log10(4.0 / mse)) if mse > 0 else float("inf")
  if args.json:
    print(json.dumps(res))
  else:
    for k, v in res.items():
      print(f"{k:>32}: {v}")


if __name__ == "__main__":
  main()
