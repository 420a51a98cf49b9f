"""python -m train.main --config configs/motion_adapter.py:tiny --workdir DIR [--config.x=y]"""
from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "config file:variant", lock_config=True)
flags.DEFINE_string("workdir", None, "output directory (checkpoints, events, history.json)")
flags.DEFINE_string("coordinator", "", "host:port for jax.distributed (multi-process)")
flags.DEFINE_integer("num_processes", 1, "jax.distributed process count")
flags.DEFINE_integer("process_id", 0, "jax.distributed process id")
flags.DEFINE_bool("analyze_only", False, "compile the step for the config's batch and print memory/cost analysis")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  import jax
  if flags.FLAGS.coordinator:
    jax.distributed.initialize(flags.FLAGS.coordinator, flags.FLAGS.num_processes, flags.FLAGS.process_id)
  from train import loop
  cfg = flags.FLAGS.config
  if flags.FLAGS.analyze_only:
    report = loop.analyze(cfg)
    print(json.dumps(report, indent=1))
    os.makedirs(flags.FLAGS.workdir, exist_ok=True)
    with open(os.path.join(flags.FLAGS.workdir, "analysis.json"), "w") as f:
      json.dump(report, f, indent=1)
    return
  hist = loop.train(cfg, flags.FLAGS.workdir)
  if jax.process_index() == 0:
    with open(os.path.join(flags.FLAGS.workdir, "history.json"), "w") as f:
      json.dump(hist, f)
  logging.info("final loss %s", hist["loss"][-1:] )


if __name__ == "__main__":
  app.run(main)
