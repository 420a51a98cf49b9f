"""python -m train.sweep --config configs/motion_adapter.py:tiny --sweep "lr=[1e-4,3e-4]" --root DIR

Expands a sweep (the product of `key=[v1,v2,...]` groups; `lr` is short for `optim.lr_g`; without --sweep, the
config file's `get_sweep()`) into named runs under one root, prints each launch command (for a cluster), runs
them sequentially here, and writes `results.csv` + `results.md` with the final metrics of every run.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import re
import shlex
import subprocess
import sys

from absl import app, flags

flags.DEFINE_string("config", None, "config file:variant (as for train.main)")
flags.DEFINE_string("sweep", "", 'e.g. "lr=[1e-4,3e-4] optim.b2=[0.99,0.999]"')
flags.DEFINE_string("root", "/tmp/r3p_sweep", "root directory of the runs")
flags.DEFINE_bool("dry_run", False, "only print the launch commands")
flags.DEFINE_multi_string("set", [], "extra --config.k=v overrides for every run (k=v)")
flags.mark_flags_as_required(["config"])

ALIASES = {"lr": "optim.lr_g", "lr_d": "optim.lr_d", "batch": "data.global_batch", "steps": "total_steps"}


def parse_sweep(text: str) -> list[dict[str, str]]:
  groups = re.findall(r"([\w.]+)=\[([^\]]*)\]", text)
  if text.strip() and not groups:
    raise ValueError(f"cannot parse sweep {text!r}; expected key=[v1,v2,...] groups")
  keys = [ALIASES.get(k, k) for k, _ in groups]
  values = [[v.strip() for v in vs.split(",") if v.strip()] for _, vs in groups]
  return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def run_name(params: dict[str, str]) -> str:
  return "_".join(f"{k.split('.')[-1]}={v}" for k, v in params.items()) or "default"


def command(config: str, workdir: str, params: dict[str, str], extra=()) -> list[str]:
  return ([sys.executable, "-m", "train.main", "--config", config, "--workdir", workdir]
          + [f"--config.{k}={v}" for k, v in params.items()] + [f"--config.{e}" for e in extra])


def main(argv):
  del argv
  f = flags.FLAGS
  if f.sweep:
    runs = parse_sweep(f.sweep)
  else:
    import importlib.util
    path = f.config.split(":")[0]
    spec = importlib.util.spec_from_file_location("sweep_cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = [{k: str(v) for k, v in d.items()} for d in mod.get_sweep()]
  os.makedirs(f.root, exist_ok=True)
  rows = []
  with open(os.path.join(f.root, "manifest.json"), "w") as fh:
    json.dump([{"name": run_name(p), "params": p} for p in runs], fh, indent=1)
  for params in runs:
    name = run_name(params)
    workdir = os.path.join(f.root, name)
    cmd = command(f.config, workdir, params, f.set)
    print(shlex.join(cmd), flush=True)
    if f.dry_run:
      continue
    subprocess.run(cmd, check=True)
    hist = json.load(open(os.path.join(workdir, "history.json")))
    rows.append({"run": name, **params, "final_step": hist["step"][-1], "final_loss": hist["loss"][-1],
                 "first_loss": hist["loss"][0]})
  if rows:
    write_tables(rows, f.root)


def write_tables(rows: list[dict], root: str) -> None:
  cols = list(dict.fromkeys(k for r in rows for k in r))
  with open(os.path.join(root, "results.csv"), "w", newline="") as fh:
    w = csv.DictWriter(fh, cols)
    w.writeheader()
    w.writerows(rows)
  with open(os.path.join(root, "results.md"), "w") as fh:
    fh.write("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
    for r in rows:
      fh.write("| " + " | ".join(f"{r.get(c, ''):.6g}" if isinstance(r.get(c), float) else str(r.get(c, ""))
                                 for c in cols) + " |\n")
  print(open(os.path.join(root, "results.md")).read())


if __name__ == "__main__":
  app.run(main)
