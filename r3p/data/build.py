"""python -m r3p.data.build --out DIR [--source synthetic] [--size 64] [--n_clips 16] [--n_frames 32] [--seed 0]

Writes the TFDS array_record dataset of processed talking-head clips (`r3p.data.tfds_clips`) under DIR and prints
the directory to pass to training: `--config.data.name=array_record:<that directory>` (or DIR itself when it
holds one dataset). Only the embedded synthetic source is built in; a video source needs the face toolkit's
per-frame preprocessing (segmentation, 3DMM fit, SECC render), which this command does not run (it says so).
"""
from __future__ import annotations

import json
import os
import time

from absl import app, flags

flags.DEFINE_string("out", None, "TFDS data_dir to write into")
flags.DEFINE_string("source", "synthetic", "'synthetic' (embedded, no downloads)")
flags.DEFINE_integer("size", 64, "image size S (frames S×S)")
flags.DEFINE_integer("n_clips", 16, "number of clips")
flags.DEFINE_integer("n_frames", 32, "frames per clip (25 fps)")
flags.DEFINE_integer("seed", 0, "generator seed")
flags.mark_flags_as_required(["out"])


def dir_size(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main(argv):
  del argv
  f = flags.FLAGS
  if f.source != "synthetic":
    raise app.UsageError(f"--source {f.source!r}: only 'synthetic' is built in (preparing frames from a video "
                         "needs the face toolkit's segmentation/3DMM/SECC preprocessing, not wired here)")
  from r3p.data import tfds_clips
  t0 = time.time()
  path = tfds_clips.build(f.out, tfds_clips.config_for(f.source, size=f.size, n_clips=f.n_clips,
                                                       n_frames=f.n_frames, seed=f.seed))
  report = {"path": path, "records": f.n_clips * f.n_frames, "bytes": dir_size(path),
            "seconds": round(time.time() - t0, 2)}
  print(json.dumps(report))
  print(f"train with: --config.data.name=array_record:{path}")


if __name__ == "__main__":
  app.run(main)
