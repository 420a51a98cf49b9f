"""Peak memory of `eval.metrics` on a short and a long video (streaming check: long / short should stay <= 1.2).

    python -m eval.bench_memory [--short 10] [--long 600] [--size 64] [--metrics psnr,ssim] [--random_weights]
        [--source VIDEO] [--src_img SRC.png] [--landmarker face_landmarker.task] [--fid_ref_seconds 2]

Both videos are synthetic, 25 fps, --size pixels square: ffmpeg's `testsrc2` pattern, or with --source a video
looped to the length (a face video, so that the face metrics CSIM/LMD/AED/APD really run on every frame); each is
compared against a noisy copy of itself. Each evaluation runs in its own process, which reports its peak RSS
(ru_maxrss). The network metrics resize internally (Inception to 299, ArcFace crops to 112), so their cost per frame
does not depend on --size: a low resolution only makes decoding and PSNR/SSIM/LPIPS cheap. With `fid`, the FID
reference is a statistics file computed once beforehand from the first --fid_ref_seconds of the noise-free video
(so both runs do the same work per frame: only the pred goes through Inception); that clip's run also warms a JAX
compilation cache that the two measured runs load from (so neither peak includes compilation).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

_CHILD = r"""
import resource, runpy, sys, json
argv = json.loads(sys.argv[1]); out = sys.argv[2]
sys.argv = ["eval.metrics"] + argv
code = 0
try:
  runpy.run_module("eval.metrics", run_name="__main__")
except SystemExit as e:
  code = e.code or 0
open(out, "w").write(json.dumps({"rc": code, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_video(path: str, seconds: float, size: int, noise: bool, source: str | None = None) -> None:
  import imageio_ffmpeg
  vf = f"scale={size}:{size}:flags=area" if source else "null"
  if noise:
    vf += ",noise=alls=20:allf=t"
  src = (["-stream_loop", "-1", "-i", source, "-an", "-t", str(seconds)] if source else
         ["-f", "lavfi", "-i", f"testsrc2=size={size}x{size}:rate=25:duration={seconds}"])
  cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *src, "-vf", vf, "-r", "25", "-c:v", "libx264",
         "-crf", "18", "-pix_fmt", "yuv420p", path]
  subprocess.run(cmd, check=True)


def measure(argv: list[str], tmp: str, cache_dir: str | None = None) -> dict:
  res, out = os.path.join(tmp, "peak.json"), os.path.join(tmp, "r.json")
  env = dict(os.environ)
  if cache_dir:  # JAX's persistent compilation cache: later runs load the programs the warm-up compiled
    env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  t = time.perf_counter()
  subprocess.run([sys.executable, "-c", _CHILD, json.dumps(argv + ["--out", out, "--quiet"]), res], check=True,
                 stdout=subprocess.DEVNULL, env=env)
  with open(res) as f:
    peak = json.load(f)
  if peak["rc"] != 0:
    raise SystemExit(f"eval.bench_memory: eval.metrics failed (exit {peak['rc']}) on {argv}")
  with open(out) as f:
    r = json.load(f)
  peak.update(frames=r["frames"], frames_per_s=r["timing"]["frames_per_s"], wall_s=time.perf_counter() - t,
              summary=r["summary"], skipped=r["skipped"])
  return peak


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m eval.bench_memory", description=__doc__.split("\n\n")[0])
  ap.add_argument("--short", type=float, default=10.0, help="seconds")
  ap.add_argument("--long", type=float, default=600.0, help="seconds")
  ap.add_argument("--size", type=int, default=64)
  ap.add_argument("--metrics", default="psnr,ssim")
  ap.add_argument("--random_weights", action="store_true")
  ap.add_argument("--source", help="video looped to make the clips (default: ffmpeg testsrc2, which has no face)")
  ap.add_argument("--src_img", help="source portrait for csim")
  ap.add_argument("--landmarker", help="face_landmarker.task for the face metrics")
  ap.add_argument("--fid_ref_seconds", type=float, default=2.0)
  ap.add_argument("--json", help="also write the measurements here")
  ap.add_argument("--no_warmup", action="store_true",
                  help="no warm-up run (by default a --fid_ref_seconds clip is evaluated first with the same metrics "
                  "into a fresh JAX compilation cache, so the short and the long run both load the same compiled "
                  "programs and neither peak includes compilation)")
  a = ap.parse_args(argv)
  base = ["--metrics", a.metrics]
  base += ["--random_weights"] if a.random_weights else []
  base += ["--src_img", a.src_img] if a.src_img else []
  base += ["--landmarker", a.landmarker] if a.landmarker else []
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    cache = None if a.no_warmup else os.path.join(tmp, "jax_cache")
    fid = "fid" in a.metrics.split(",")
    if fid or cache:
      ref = os.path.join(tmp, "ref.mp4")
      make_video(ref, a.fid_ref_seconds, a.size, False, a.source)
      stats = os.path.join(tmp, "fid_ref.npz")
      # warm-up: the noise-free clip against itself; its FID statistics become the reference of both runs
      t = time.perf_counter()
      measure(["--pred", ref, "--gt", ref] + base + (["--save_fid_stats", stats] if fid else []), tmp, cache)
      print(f"warm-up ({a.fid_ref_seconds:g} s clip, compiles): {time.perf_counter() - t:.0f} s", flush=True)
      if fid:
        base += ["--fid_ref", stats]
    for name, sec in (("short", a.short), ("long", a.long)):
      gt, pred = os.path.join(tmp, f"{name}_gt.mp4"), os.path.join(tmp, f"{name}_pred.mp4")
      make_video(gt, sec, a.size, False, a.source)
      make_video(pred, sec, a.size, True, a.source)
      rows[name] = measure(["--pred", pred, "--gt", gt] + base, tmp, cache)
      rows[name]["seconds"] = sec
      print(f"{name}: {sec:g} s, {rows[name]['frames']} frames, peak RSS {rows[name]['peak_rss_mb']:.0f} MB, "
            f"{rows[name]['frames_per_s']:.2f} frames/s, wall {rows[name]['wall_s']:.0f} s, "
            f"skipped {rows[name]['skipped']}", flush=True)
  ratio = rows["long"]["peak_rss_mb"] / rows["short"]["peak_rss_mb"]
  print(f"peak memory long / short = {ratio:.3f} ({'OK' if ratio <= 1.2 else 'ABOVE'} the 1.2 bound), "
        f"metrics {a.metrics}, {a.size}x{a.size}{', frames from ' + a.source if a.source else ''}")
  if a.json:
    with open(a.json, "w") as f:
      json.dump({"rows": rows, "ratio": ratio, "metrics": a.metrics, "size": a.size, "source": a.source}, f, indent=1)
  return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
  sys.exit(main())
