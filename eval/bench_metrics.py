"""CPU/GPU throughput of each metric (frames/s, steady state after compilation), seeded random weights.

    python -m eval.bench_metrics [--size 256] [--batch 8] [--iters 3] [--metrics psnr_ssim,lpips,fid,arcface,sync]

Each metric's jitted batch function is called once to compile, then `--iters` times; frames/s = batch * iters /
seconds. Landmarks (MediaPipe) and the AED/APD 3DMM fit are timed with --landmarker / when asked (`landmarks`,
`fit`). The numbers are for the machine it runs on (printed).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def _time(fn, iters):
  import jax
  jax.block_until_ready(fn())
  t = time.perf_counter()
  for _ in range(iters):
    jax.block_until_ready(fn())
  return (time.perf_counter() - t) / iters


def main(argv=None) -> int:
  import jax
  ap = argparse.ArgumentParser(prog="python -m eval.bench_metrics", description=__doc__.split("\n\n")[0])
  ap.add_argument("--size", type=int, default=256)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--iters", type=int, default=3)
  ap.add_argument("--metrics", default="psnr_ssim,lpips,fid,arcface,sync")
  ap.add_argument("--landmarker", help="face_landmarker.task, to time MediaPipe landmarks per frame (random "
                  "frames: the detector finds no face, so the mesh stage is not timed)")
  a = ap.parse_args(argv)
  B, S = a.batch, a.size
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 255, (B, S, S, 3)).astype(np.uint8)
  other = rng.integers(0, 255, (B, S, S, 3)).astype(np.uint8)
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, "
        f"jax backend {jax.default_backend()}, devices {jax.devices()[0].device_kind}; batch {B}, {S}x{S} frames")
  todo = a.metrics.split(",")
  res = {}
  if "psnr_ssim" in todo:
    from eval import image_metrics as im
    res["psnr+ssim"] = _time(lambda: im._sq_err_rows_and_ssim(frames, other), a.iters)
  if "lpips" in todo:
    from eval import lpips
    f = lpips.distance_fn(lpips.build("alex", None))
    res["lpips (alex)"] = _time(lambda: f(frames, other), a.iters)
  if "fid" in todo:
    from eval import inception
    f = inception.features_fn(inception.build(None))
    res["fid (inception pool3)"] = _time(lambda: f(frames), a.iters)
  if "arcface" in todo:
    from eval import arcface
    f = arcface.embed_fn(arcface.build(None, arch="r100"))
    crops = frames[:, :112, :112]
    res["csim (arcface r100, 112 crops)"] = _time(lambda: f(crops), a.iters)
  if "sync" in todo:
    from eval import syncnet_v2
    lip, aud = syncnet_v2.embed_fns(syncnet_v2.build(None))
    win = rng.integers(0, 255, (B, 5, 224, 224, 3)).astype(np.uint8)
    mf = rng.normal(size=(B, 13, 20, 1)).astype(np.float32)
    res["sync (lip+audio window)"] = _time(lambda: (lip(win), aud(mf)), a.iters)
  if a.landmarker:
    from r3p.face.landmarks import FaceDetectionError, Landmarker
    lm = Landmarker(a.landmarker)

    def detect_all():
      for f in frames:
        try:
          lm.detect_image(f)
        except FaceDetectionError:  # random frames hold no face; the detector ran all the same
          pass
    res["landmarks (mediapipe, per frame)"] = _time(detect_all, a.iters)
    lm.close()
  for k, t in res.items():
    print(f"{k:<32} {B / t:9.2f} frames/s  ({t * 1000 / B:.1f} ms/frame)")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
