"""python -m train.main --config configs/motion_adapter.py:tiny --workdir DIR [--config.x=y]

Any stage config (`configs/<stage>.py:<variant>`); data from `--config.data.name=synthetic` (default, embedded)
or `--config.data.name=array_record:DIR` (built by `python -m r3p.data.build --out DIR`).
"""
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


def _install_load_pretrained(loop) -> None:
  """A stage may define `load_pretrained(cfg, state, trainer) -> state` (HTB-SR: the frozen head from a stage-2
  checkpoint), run after a from-scratch init and not on resume. Where train/loop.py does not call it yet, wrap
  the loop's Trainer so that `init_state` does."""
  import inspect
  base = loop.Trainer
  if getattr(base, "_r3p_load_pretrained", False) or "load_pretrained" in inspect.getsource(loop.train):
    return

  class Trainer(base):
    _r3p_load_pretrained = True

    def init_state(self):
      state = super().init_state()
      hook = getattr(self.stage, "load_pretrained", None)
      return hook(self.cfg, state, self) if hook is not None else state
  loop.Trainer = Trainer


def main(argv):
  del argv
  import jax
  if flags.FLAGS.coordinator:
    jax.distributed.initialize(flags.FLAGS.coordinator, flags.FLAGS.num_processes, flags.FLAGS.process_id)
  from r3p.data import sources
  from train import loop
  if loop.make_source is not sources.make_source:
    # Data selection lives in r3p.data.sources (synthetic | array_record:DIR, torso keys for HTB-SR); until
    # train/loop.py imports it, route the loop's lookup through it.
    loop.make_source = sources.make_source
  cfg = flags.FLAGS.config
  _install_load_pretrained(loop)
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
