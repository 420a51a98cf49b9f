"""python -m train.sensitivity --config configs/motion_adapter.py:tiny [--steps 20] [--rel 1e-7] [--config.x=y]

How strongly a config's training amplifies rounding: trains the same run twice on one device, the second from
params multiplied by (1 + rel·N(0,1)), and prints the relative difference of the total loss per step. A run that
amplifies a 1e-7 perturbation past 1e-5 within N steps cannot give ≤1e-5 agreement between two meshes (or
processes) over N steps either, since those only change the order of floating-point sums. Prints one JSON line.
"""
from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

def run_steps(trainer, cfg, mesh, n: int, state=None):
  """Total loss of `n` steps from `state` (default: a fresh init) on the config's data stream -> np.ndarray.
  The step is compiled on the first batch, or reused from `trainer.step_fn` when an earlier call built it."""
  import jax
  import numpy as np
  from r3p import parallel
  from r3p.data import pipeline, sources

  state = trainer.init_state() if state is None else state
  it = iter(pipeline.make_dataset(sources.make_source(cfg), global_batch=cfg.data.global_batch, seed=cfg.seed))
  out = []
  for _ in range(n):
    b = next(it)
    spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in b.items()}
    step_fn = trainer.step_fn or trainer.make_step(spec)
    state, m = step_fn(state, parallel.shard_batch(b, mesh))
    out.append(float(jax.device_get(m["loss/total"])))
  return np.array(out)


def loss_curves(cfg, steps: int, rel: float, perturb_seed: int = 7):
  """(unperturbed, perturbed) total-loss lists of `steps` steps on one device."""
  import jax
  from r3p import parallel
  from train.state import Trainer

  mesh = parallel.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
  tr = Trainer(cfg, mesh)
  clean = run_steps(tr, cfg, mesh, steps)
  # A second init (the step donates its input state, so the first one's buffers are gone).
  state = tr.init_state()
  leaves, tdef = jax.tree.flatten(state["params"])
  keys = jax.random.split(jax.random.key(perturb_seed), len(leaves))
  state["params"] = jax.tree.unflatten(
      tdef, [x * (1 + rel * jax.random.normal(k, x.shape, x.dtype)) for x, k in zip(leaves, keys)])
  return clean, run_steps(tr, cfg, mesh, steps, state)


def _define_flags() -> None:
  """Flags are registered only when run as a program: importing this module (tests, beside train.main in one
  process) must define none, or the shared names (`config`) clash."""
  config_flags.DEFINE_config_file("config", None, "config file:variant", lock_config=True)
  flags.DEFINE_integer("steps", 20, "steps per run")
  flags.DEFINE_float("rel", 1e-7, "relative size of the parameter perturbation")
  flags.DEFINE_integer("perturb_seed", 7, "seed of the perturbation draw")
  flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  import numpy as np
  f = flags.FLAGS
  a, b = loss_curves(f.config, f.steps, f.rel, f.perturb_seed)
  rel = (np.abs(a - b) / np.abs(a)).tolist()
  print(json.dumps({"rel": f.rel, "loss": a.tolist(), "rel_diff_per_step": rel, "max_rel_diff": max(rel)}))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
