"""The training loop: mesh, sharded init or resume, data, the jitted step, metrics, checkpoints, NaN guard.

Resume precedence: own workdir checkpoints, then `config.resume` (another workdir), then scratch.
"""
from __future__ import annotations

import logging
import os
import time

import jax
import numpy as np
import tqdm

from r3p import checkpoint as ckpt_lib
from r3p import parallel
from r3p.data import pipeline
from r3p.data.synthetic import SyntheticTalkingHeads
from train.metrics import make_writer
from train.state import Trainer


def make_source(cfg):
  d = cfg.data
  if d.name != "synthetic":
    raise ValueError(f"unknown dataset {d.name!r}")
  return SyntheticTalkingHeads(size=d.size, n_clips=d.n_clips, n_items=d.n_items, seed=cfg.seed)


def train(cfg, workdir: str) -> dict[str, list]:
  """Run `cfg.total_steps` steps. Returns {'step': [...], 'loss': [...]} of the logged (fetched) steps, plus
  'd_loss' (the discriminator's total) for a stage with a discriminator."""
  os.makedirs(workdir, exist_ok=True)
  logging.info("The config:\n%s", cfg)
  mesh = parallel.make_mesh(dict(cfg.mesh))
  parallel.check_batch(cfg.data.global_batch, mesh)
  trainer = Trainer(cfg, mesh)
  ds = pipeline.make_dataset(make_source(cfg), global_batch=cfg.data.global_batch, seed=cfg.seed)
  it = iter(ds)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "ckpt"), keep=cfg.keep, keep_period=cfg.keep_period,
                               save_every=cfg.ckpt_every, async_save=cfg.async_checkpointing)
  src = ckpt if ckpt.latest_step() is not None else (
      ckpt_lib.Checkpointer(os.path.join(cfg.resume, "ckpt")) if cfg.resume else None)
  if src is not None and src.latest_step() is not None:
    state, data_state = src.restore(trainer.abstract_sharded_state())
    it.set_state(data_state)
    logging.info("resumed from step %d", int(jax.device_get(state["step"])))
  else:
    state = trainer.init_state()
    if hasattr(trainer.stage, "load_pretrained"):  # e.g. user-supplied frozen loss networks (not on resume)
      state = trainer.stage.load_pretrained(cfg, state, trainer)
  start = int(jax.device_get(state["step"]))
  with open(os.path.join(workdir, "param_shardings.json"), "w") as f:
    f.write(trainer.param_shardings_json())

  writer = make_writer(workdir, just_logging=jax.process_index() > 0)
  writer.write_hparams({k: str(v) for k, v in cfg.items()})
  first = next(it)
  spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in first.items()}
  step_fn = trainer.make_step(spec)
  history = {"step": [], "loss": []}
  pending = first
  bar = tqdm.tqdm(total=cfg.total_steps, initial=start, disable=not cfg.progress or jax.process_index() > 0,
                  unit="step", dynamic_ncols=True)
  t0 = time.time()
  last_good = start
  for step in range(start, cfg.total_steps):
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      batch = parallel.shard_batch(pending, mesh)
      data_state = it.get_state()  # the iterator state *after* this batch: resume continues with the next one
      state, metrics = step_fn(state, batch)
    pending = next(it)
    done = step + 1
    bar.update(1)
    log_now = done % cfg.log_every == 0 or done == cfg.total_steps
    save_now = done % cfg.ckpt_every == 0 or done == cfg.total_steps or ckpt.reached_preemption(done)
    if log_now or save_now:
      m = jax.device_get(metrics)
      if not all(np.isfinite(v) for v in m.values()):
        bad = sorted(k for k, v in m.items() if not np.isfinite(v))
        ckpt.wait()
        raise FloatingPointError(f"non-finite metrics at step {done}: {bad}; last good checkpoint: step "
                                 f"{ckpt.latest_step()} (left intact)")
      history["step"].append(done)
      history["loss"].append(float(m["loss/total"]))
      if "d/total" in m:  # the discriminator's loss (0 before it starts)
        history.setdefault("d_loss", []).append(float(m["d/total"]))
      if log_now:
        m["steps_per_sec"] = (done - last_good) / max(time.time() - t0, 1e-9)
        t0, last_good = time.time(), done
        writer.write_scalars(done, m)
        bar.set_postfix(loss=f"{m['loss/total']:.4f}")
      if save_now:
        ckpt.save(done, state, data_state, force=True)
        if ckpt.reached_preemption(done):
          ckpt.wait()
          logging.warning("preempted: saved step %d, exiting", done)
          break
    if cfg.stop_after > 0 and done - start >= cfg.stop_after:
      break
  bar.close()
  ckpt.close()
  writer.flush()
  return history


def analyze(cfg) -> dict:
  """Compile the step abstractly (no params materialised) and return per-device memory and FLOPs/step."""
  mesh = parallel.make_mesh(dict(cfg.mesh))
  parallel.check_batch(cfg.data.global_batch, mesh)
  trainer = Trainer(cfg, mesh)
  src = make_source(cfg)
  item = src[0]
  b = cfg.data.global_batch
  spec = {k: jax.ShapeDtypeStruct((b,) + np.shape(v), np.asarray(v).dtype) for k, v in item.items()}
  step = trainer.make_step(spec)
  t0 = time.time()
  lowered = step.lower(trainer.abstract_sharded_state(), spec)
  compiled = lowered.compile()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_state["params"]))
  d_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_state.get("disc", {}).get(
      "params", {})))
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
            "generated_code_size_in_bytes")
  return {"devices": int(mesh.size), "global_batch": b, "params": n_params, "d_params": d_params,
          "compile_s": time.time() - t0,
          **{k: int(getattr(mem, k, -1)) for k in fields},
          "flops": float(cost.get("flops", -1)), "bytes_accessed": float(cost.get("bytes accessed", -1))}
