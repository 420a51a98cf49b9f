"""Peak memory of the audio-to-motion path (HuBERT-large + A2M) against clip length.

    python -m r3p.audio.bench_memory [--seconds 10 600] [--json]

Each length runs in a fresh subprocess (so peaks do not mix): a synthetic 16-kHz stereo 16-bit wav (a gliding
harmonic tone plus noise, so f0 and HuBERT see voiced input), written by the parent, goes through the CLI's path
(load -> features -> HuBERT chunks -> A2M) with full-size random weights (the released shapes), after a 2-s warm-up
that compiles everything. Reported: peak RSS (ru_maxrss), wall time, CPU time per second of
audio, and the ratio of the longest to the shortest clip (acceptance: <= 1.2).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def synth_clip(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
  """[N, 2] float64 in [-1, 1): a gliding harmonic tone plus noise, quantised to 16 bits."""
  rng = np.random.default_rng(seed)
  n = int(seconds * sr)
  t = np.arange(n) / sr
  f = 140 + 40 * np.sin(2 * np.pi * 0.3 * t)
  phase = 2 * np.pi * np.cumsum(f) / sr
  x = sum(0.2 / k * np.sin(k * phase) for k in range(1, 6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
  x = x + 0.01 * rng.standard_normal(n)
  x = np.round(np.clip(x, -1, 1) * 32767) / 32768.0
  return np.stack([x, 0.9 * x], 1)


def write_clip(path: str, seconds: float, seed: int = 0) -> None:
  """A synthetic stereo 16-bit 16-kHz wav, written in blocks (the parent's memory is not measured anyway)."""
  import soundfile as sf
  x = synth_clip(seconds, seed=seed)
  sf.write(path, x, 16000, subtype="PCM_16")


def _child(path: str) -> dict:
  """The CLI's path (`r3p.audio.drive.main`) with timings: load -> features -> HuBERT -> A2M."""
  from r3p.audio import features as F
  from r3p.audio.drive import AudioToMotion
  t0 = time.perf_counter()
  driver = AudioToMotion.random(0)
  build = time.perf_counter() - t0
  # warm-up on a short clip: compiles the HuBERT chunk function (the same for every length) and A2M
  driver(F.Audio(synth_clip(2.0, seed=1).astype(np.float32), 16000), progress=False)
  rss_warm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  t1, c1 = time.perf_counter(), time.process_time()
  audio = F.load_audio(path)
  feats, seconds = F.extract_features(audio), audio.seconds
  del audio
  t_feat = time.perf_counter() - t1
  tm = {}
  out = driver.from_features(feats, seconds, progress=False, timings=tm)
  wall, cpu = time.perf_counter() - t1, time.process_time() - c1
  return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "rss_after_warmup_mb": rss_warm / 1024, "build_s": build, "wall_s": wall, "cpu_s": cpu,
          "features_s": t_feat, "hubert_wall_s": tm["hubert_s"], "a2m_wall_s": tm["a2m_s"],
          "hubert_wall_s_per_audio_s": tm["hubert_s"] / seconds, "a2m_wall_s_per_audio_s": tm["a2m_s"] / seconds,
          "cpu_s_per_audio_s": cpu / seconds, "frames": int(out["exp"].shape[0])}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m r3p.audio.bench_memory", description=__doc__.split("\n\n")[0])
  ap.add_argument("--seconds", type=float, nargs="+", default=[10.0, 600.0])
  ap.add_argument("--json", action="store_true")
  ap.add_argument("--child", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.child is not None:
    print("BENCH " + json.dumps(_child(args.child)), flush=True)
    return 0
  results = []
  import tempfile
  td = tempfile.TemporaryDirectory()
  for s in args.seconds:
    path = os.path.join(td.name, f"clip{s:g}.wav")
    write_clip(path, s)
    p = subprocess.run([sys.executable, "-m", "r3p.audio.bench_memory", "--child", path], capture_output=True,
                       text=True, env=dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu")))
    os.remove(path)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("BENCH ")]
    if p.returncode != 0 or not line:
      print(f"bench_memory: {s} s run failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
      return 1
    r = json.loads(line[-1][6:])
    results.append(r)
    if not args.json:
      print(f"{s:8.0f} s audio: peak RSS {r['peak_rss_mb']:8.0f} MB  wall {r['wall_s']:7.1f} s  "
            f"CPU/audio-s {r['cpu_s_per_audio_s']:.2f}  HuBERT {r['hubert_wall_s_per_audio_s']:.3f} s/s  "
            f"A2M {r['a2m_wall_s_per_audio_s']:.4f} s/s", flush=True)
  ratio = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
  summary = {"runs": results, "peak_ratio_longest_to_shortest": ratio, "acceptance_le_1_2": ratio <= 1.2}
  if args.json:
    print(json.dumps(summary))
  else:
    print(f"peak RSS ratio {results[-1]['seconds']:.0f} s / {results[0]['seconds']:.0f} s = {ratio:.3f} "
          f"({'OK' if ratio <= 1.2 else 'ABOVE'} the 1.2 bound)")
  return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
  sys.exit(main())
