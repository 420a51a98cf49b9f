"""Benchmark of `r3p infer` (random weights): frames/s and peak memory per (clip length, chunk size).

    python -m eval.bench_infer --src_img Macron.png --drv_aud Obama_5s.wav --landmarker_dir DIR \
        [--seconds 10 600] [--chunks 1 4 16] [--net full|standin] [--max_frames N] [--dtype float32|bfloat16]
    [--devices N|all] [--json out.json]

Each configuration runs in a fresh child process (so peak RSS is its own, `ru_maxrss`) through `Portrait.animate`
— the same path as the CLI — writing a real mp4. The driving audio is the given clip tiled to the requested
length. frames/s is the steady state: frames after the first chunk (which carries compilation) over their time.

`--net full` is the released network with seeded random weights (on a 2-core CPU: tens of seconds per frame, so
use --max_frames); `--net standin` swaps in a per-pixel linear stand-in with the network's interface and output
shapes, which measures everything around the network (audio, A2M, SECC rendering, writer, memory growth with clip
length) at CPU speed.

Memory: every row carries `peak_rss_mb` (ru_maxrss of the child) and `rss_curve`, one (stage, frames done, seconds,
current RSS MB, peak RSS so far MB) per progress event (per chunk while rendering); `--curve_log FILE` appends the
same as JSON lines while the child runs (long clips). Flat memory shows as a peak reached within the first SECC
blocks and constant after, whatever the number of frames.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def _standin_model(seed: int = 0):
  import jax
  import jax.numpy as jnp
  from flax import nnx

  class StandIn(nnx.Module):
    """Same interface/output shapes as OSAvatarSECC_Img2plane_Torso; per-pixel linear maps."""

    def __init__(self, rngs):
      self.w = nnx.Param(jax.random.normal(rngs.params(), (21, 3)) * 0.2)

    def source(self, img, torso, bg, segmap):
      return {"cano_planes": jnp.concatenate([img, torso, bg, segmap[..., :3]], -1), "sr": {}}

    def frame(self, src, camera, cond_cano, cond_src, cond_tgt, kp_s, kp_d, *, key=None, head_threshold=0.9, **_):
      b = camera.shape[0]
      x = jnp.concatenate([jnp.broadcast_to(src["cano_planes"], (b,) + src["cano_planes"].shape[1:]), cond_cano,
                           cond_src, cond_tgt], -1)
      image = jnp.tanh(x @ self.w[...] + camera[:, :3, None, None].transpose(0, 2, 3, 1))
      small = jax.image.resize(image, (b, 128, 128, 3), "linear")
      w = jax.nn.sigmoid(small[..., :1])
      return {"image": image, "image_raw": small, "image_depth": small[..., :1], "weights_img": w,
              "occlusion_2": jax.image.resize(w, (b, 256, 256, 1), "linear")}

  return StandIn(nnx.Rngs(seed))


def _tiled_audio(src: str, seconds: float, out: str):
  from r3p.audio import features as F
  import soundfile as sf

  a = F.load_audio(src).samples[:, 0]
  n = int(seconds * F.SAMPLE_RATE)
  reps = -(-n // len(a))
  sf.write(out, np.tile(a, reps)[:n], F.SAMPLE_RATE, subtype="PCM_16")


def _rss_mb() -> float:
  """Current resident set size of this process (VmRSS), MB; NaN where /proc is unavailable."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return float("nan")


def _peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def child(args) -> dict:
  from r3p import api

  load0 = os.getloadavg()[0]
  t0 = time.perf_counter()
  model = _standin_model() if args.net == "standin" else None
  mp = args.landmarker_dir
  p = api.Portrait.random_weights(0, landmarker=os.path.join(mp, "face_landmarker.task"),
                                  segmenter=args.segmenter or None, model=model, log=lambda s: None,
                                  dtype=args.dtype)
  build_s = time.perf_counter() - t0
  with tempfile.TemporaryDirectory() as d:
    wav = os.path.join(d, "drv.wav")
    _tiled_audio(args.drv_aud, args.child_seconds, wav)
    times = []
    first = None
    # Memory curve: (stage, frames done, seconds since start, current RSS MB, peak RSS so far MB) at every event
    # (every chunk while rendering), to tell growth with rendered frames from one-time warm-up.
    curve = []
    for ev in p.animate(args.src_img, wav, os.path.join(d, "out.mp4"), chunk=args.child_chunk,
                        max_frames=args.max_frames, devices=args.devices):
      curve.append((ev.stage, ev.done, round(time.perf_counter() - t0, 2), round(_rss_mb(), 1),
                    round(_peak_mb(), 1)))
      if args.curve_log:  # live copy of the curve, one JSON line per event (long runs)
        with open(args.curve_log, "a") as f:
          f.write(json.dumps(curve[-1]) + "\n")
      if ev.stage == "motion":
        prep_s = ev.elapsed_s
      if ev.stage == "render":
        times.append((ev.done, time.perf_counter(), _cpu_s()))
        if first is None:
          first = ev.elapsed_s
      if ev.stage == "done":
        total_s, frames = ev.elapsed_s, ev.done
  steady = (times[-1][0] - times[0][0]) / (times[-1][1] - times[0][1]) if len(times) > 1 else float("nan")
  # CPU seconds of this process per frame after the first chunk: unlike frames/s, barely moved by other processes
  # sharing the machine (the ffmpeg encoder is a separate process, not counted).
  cpu = (times[-1][2] - times[0][2]) / (times[-1][0] - times[0][0]) if len(times) > 1 else float("nan")
  return {"net": args.net, "seconds": args.child_seconds, "chunk": args.child_chunk, "frames": frames,
          "steady_fps": steady, "steady_cpu_s_per_frame": cpu, "overall_fps": frames / total_s, "build_s": build_s, "prepare_s": prep_s,
          "first_chunk_s": first, "total_s": total_s, "dtype": args.dtype, "devices": args.devices,
          "peak_rss_mb": _peak_mb(), "rss_curve": curve,
          # The machine may be shared: the 1-minute load average before and after, to judge each number.
          "load_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m eval.bench_infer", description=__doc__.split("\n\n")[0])
  ap.add_argument("--src_img", required=True)
  ap.add_argument("--drv_aud", required=True)
  ap.add_argument("--landmarker_dir", required=True, help="folder with face_landmarker.task and a segmenter")
  ap.add_argument("--segmenter")
  ap.add_argument("--seconds", type=float, nargs="+", default=[10.0, 600.0])
  ap.add_argument("--chunks", type=int, nargs="+", default=[1, 4, 16])
  ap.add_argument("--net", choices=("full", "standin"), default="standin")
  ap.add_argument("--max_frames", type=int, help="cut every clip to this many frames (the audio front end still "
                                                 "runs over the whole clip)")
  ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  ap.add_argument("--devices", default="1", help="local devices per chunk (N or 'all')")
  ap.add_argument("--json")
  ap.add_argument("--curve_log", help="append (stage, frames, s, RSS MB, peak RSS MB) per chunk to this file as "
                                      "JSON lines while running (the --json rows hold the same as rss_curve)")
  ap.add_argument("--child_seconds", type=float, help=argparse.SUPPRESS)
  ap.add_argument("--child_chunk", type=int, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.child_seconds is not None:
    print("RESULT " + json.dumps(child(args)))
    return 0
  rows = []
  for secs in args.seconds:
    for chunk in args.chunks:
      cmd = [sys.executable, "-m", "eval.bench_infer", "--src_img", args.src_img, "--drv_aud", args.drv_aud,
             "--landmarker_dir", args.landmarker_dir, "--net", args.net, "--child_seconds", str(secs),
             "--child_chunk", str(chunk), "--dtype", args.dtype, "--devices", args.devices]
      if args.segmenter:
        cmd += ["--segmenter", args.segmenter]
      if args.max_frames:
        cmd += ["--max_frames", str(args.max_frames)]
      if args.curve_log:
        cmd += ["--curve_log", args.curve_log]
      env = dict(os.environ, R3P_MEDIAPIPE_DIR=args.landmarker_dir)
      r = subprocess.run(cmd, capture_output=True, text=True, env=env)
      res = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
      if r.returncode != 0 or not res:
        print(f"seconds={secs} chunk={chunk}: failed: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        continue
      row = json.loads(res[0][7:])
      rows.append(row)
      print(f"{row['net']:8s} {secs:6.0f} s chunk {chunk:2d}: {row['frames']:6d} frames, steady "
            f"{row['steady_fps']:.2f} frames/s (overall {row['overall_fps']:.2f}, {row['steady_cpu_s_per_frame']:.3f} "
            f"CPU-s/frame), peak RSS "
            f"{row['peak_rss_mb']:.0f} MB, prepare {row['prepare_s']:.1f} s, first chunk {row['first_chunk_s']:.1f} s, "
            f"load {row['load_1min']}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
