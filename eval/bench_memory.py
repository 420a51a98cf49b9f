"""Peak memory of `eval.metrics` on a short and a long video (streaming check: long / short should stay <= 1.2).

    python -m eval.bench_memory [--short 10] [--long 600] [--size 64] [--metrics psnr,ssim] [--random_weights]

Both videos are synthetic (ffmpeg `testsrc2`, 25 fps, --size pixels square) and compared against a noisy copy of
themselves; each evaluation runs in its own process, which reports its peak RSS (ru_maxrss).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

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


def make_video(path: str, seconds: float, size: int, noise: bool) -> None:
  import imageio_ffmpeg
  vf = "noise=alls=20:allf=t" if noise else "null"
  cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=size={size}x{size}:rate=25:duration={seconds}", "-vf", vf, "-c:v", "libx264", "-crf", "18",
         "-pix_fmt", "yuv420p", path]
  subprocess.run(cmd, check=True)


def measure(pred: str, gt: str, metrics: str, random_weights: bool, tmp: str) -> dict:
  res = os.path.join(tmp, "peak.json")
  argv = ["--pred", pred, "--gt", gt, "--metrics", metrics, "--out", os.path.join(tmp, "r.json"), "--quiet"]
  if random_weights:
    argv.append("--random_weights")
  subprocess.run([sys.executable, "-c", _CHILD, json.dumps(argv), res], check=True,
                 stdout=subprocess.DEVNULL)
  with open(res) as f:
    out = json.load(f)
  with open(os.path.join(tmp, "r.json")) as f:
    r = json.load(f)
  out["frames"] = r["frames"]
  out["frames_per_s"] = r["timing"]["frames_per_s"]
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m eval.bench_memory", description=__doc__.split("\n\n")[0])
  ap.add_argument("--short", type=float, default=10.0, help="seconds")
  ap.add_argument("--long", type=float, default=600.0, help="seconds")
  ap.add_argument("--size", type=int, default=64)
  ap.add_argument("--metrics", default="psnr,ssim")
  ap.add_argument("--random_weights", action="store_true")
  a = ap.parse_args(argv)
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, sec in (("short", a.short), ("long", a.long)):
      gt, pred = os.path.join(tmp, f"{name}_gt.mp4"), os.path.join(tmp, f"{name}_pred.mp4")
      make_video(gt, sec, a.size, False)
      make_video(pred, sec, a.size, True)
      rows[name] = measure(pred, gt, a.metrics, a.random_weights, tmp)
      print(f"{name}: {sec:g} s, {rows[name]['frames']} frames, peak RSS {rows[name]['peak_rss_mb']:.0f} MB, "
            f"{rows[name]['frames_per_s']:.1f} frames/s (incl. compile)", flush=True)
  ratio = rows["long"]["peak_rss_mb"] / rows["short"]["peak_rss_mb"]
  print(f"peak memory long / short = {ratio:.3f} ({'OK' if ratio <= 1.2 else 'ABOVE'} the 1.2 bound), "
        f"metrics {a.metrics}, {a.size}x{a.size}")
  return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
  sys.exit(main())
