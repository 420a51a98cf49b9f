"""python -m train.sweep --config configs/motion_adapter.py:tiny --sweep "lr=[1e-4,3e-4]" --root DIR

Expands a sweep into named runs under one root, prints each launch command (for a cluster; `--launch` wraps
them, e.g. --launch="sbatch --gpus=8 --wrap {cmd}"; all are also written to ROOT/launch.sh), runs them
sequentially here (unless --dry_run), and writes ROOT/results.csv + ROOT/results.md with the final metrics of
every run (optionally joined with an `eval.benchmark` table by run name: --eval_csv).

Where the runs come from:
  --sweep "k=[v1,v2] k2=[a,b]"   the product of the groups. Keys are config paths (`lr` = optim.lr_g, `batch`,
                                 `steps`, `lr_d` are short forms) set with --config.k=v, or config-file
                                 arguments (`variant`, `ablation`), which go into the `file.py:arg` string.
  --sweep_config configs/sweeps/<name>.py[:arg]   a file whose `get_sweep(arg)` returns named runs
                                 [{'name': str, 'config': 'configs/x.py:arg', 'params': {k: v}}, ...].
  neither                        the config file's own `get_sweep()` (a list of {k: v}).
"""
from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Callable

from absl import app, flags

ALIASES = {"lr": "optim.lr_g", "lr_d": "optim.lr_d", "batch": "data.global_batch", "steps": "total_steps"}
ARG_KEYS = ("variant", "ablation")  # config-file arguments (`file.py:variant,ablation=x`), not --config.k=v


def parse_sweep(text: str) -> list[dict[str, str]]:
  groups = re.findall(r"([\w.]+)=\[([^\]]*)\]", text)
  if text.strip() and not groups:
    raise ValueError(f"cannot parse sweep {text!r}; expected key=[v1,v2,...] groups")
  keys = [ALIASES.get(k, k) for k, _ in groups]
  values = [[v.strip() for v in vs.split(",") if v.strip()] for _, vs in groups]
  return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def run_name(params: dict[str, str]) -> str:
  return "_".join(f"{k.split('.')[-1]}={v}" for k, v in params.items()) or "default"


def with_args(config: str, args: dict[str, str]) -> str:
  """'file.py:tiny' + {'ablation': 'x'} -> 'file.py:tiny,ablation=x' (a bare first word stays the variant)."""
  if not args:
    return config
  path, _, arg = config.partition(":")
  parts = [p for p in arg.split(",") if p]
  for k, v in args.items():
    parts = [p for p in parts if not p.startswith(f"{k}=")]
    if k == "variant" and parts and "=" not in parts[0]:
      parts[0] = v
    else:
      parts.append(f"{k}={v}")
  return f"{path}:{','.join(parts)}"


def command(config: str, workdir: str, params: dict[str, str], extra=()) -> list[str]:
  """The train.main command of one run: config-file arguments go into the config string, the rest are flags."""
  args = {k: v for k, v in params.items() if k in ARG_KEYS}
  rest = {k: v for k, v in params.items() if k not in ARG_KEYS}
  return ([sys.executable, "-m", "train.main", "--config", with_args(config, args), "--workdir", workdir]
          + [f"--config.{k}={v}" for k, v in rest.items()] + [f"--config.{e}" for e in extra])


def _load(path: str):
  spec = importlib.util.spec_from_file_location(f"sweep_{abs(hash(path))}", path)
  if spec is None:
    raise FileNotFoundError(f"no config file {path!r}")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def expand(config: str | None, sweep: str = "", sweep_config: str = "") -> list[dict]:
  """Named runs [{'name', 'config', 'params'}] from the flags (see the module docstring)."""
  if sweep_config:
    path, _, arg = sweep_config.partition(":")
    runs = _load(path).get_sweep(arg or None)
    out = []
    for r in runs:
      cfg = r.get("config", config)
      if not cfg:
        raise ValueError(f"{sweep_config}: run {r.get('name')!r} names no config and --config is not given")
      out.append({"name": r.get("name") or run_name(r.get("params", {})), "config": cfg,
                  "params": {k: str(v) for k, v in r.get("params", {}).items()}})
  else:
    if not config:
      raise ValueError("--config is required unless --sweep_config names the runs")
    params = parse_sweep(sweep) if sweep else [
        {k: str(v) for k, v in d.items()} for d in _load(config.split(":")[0]).get_sweep()]
    out = [{"name": run_name(p), "config": config, "params": p} for p in params]
  names = [r["name"] for r in out]
  if len(set(names)) != len(names):
    raise ValueError(f"sweep run names are not unique: {names}")
  return out


def final_row(run: dict, workdir: str, seconds: float | None = None) -> dict:
  hist = json.load(open(os.path.join(workdir, "history.json")))
  row = {"run": run["name"], "config": run["config"], **run["params"], "final_step": hist["step"][-1],
         "first_loss": hist["loss"][0], "final_loss": hist["loss"][-1], "min_loss": min(hist["loss"])}
  if seconds is not None:
    row["wall_s"] = round(seconds, 1)
  return row


def join_eval(rows: list[dict], eval_csv: str) -> list[dict]:
  """Add the `eval.benchmark` metrics (row 'config' == run name) as eval/<metric> columns."""
  with open(eval_csv) as fh:
    table = {r["config"]: r for r in csv.DictReader(fh)}
  out = []
  for r in rows:
    e = table.get(r["run"], {})
    out.append({**r, **{f"eval/{k}": (float(v) if v not in ("", None) else "") for k, v in e.items()
                        if k != "config"}})
  return out


def run_sweep(runs: list[dict], root: str, *, extra=(), dry_run: bool = False, launch: str = "",
              runner: Callable[[list[str]], None] | None = None, eval_csv: str = "") -> list[dict]:
  """Print/write the launch commands, run them with `runner` (default: a subprocess), write the tables."""
  runner = runner or (lambda cmd: subprocess.run(cmd, check=True))
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "manifest.json"), "w") as fh:
    json.dump(runs, fh, indent=1)
  cmds = []
  for r in runs:
    cmd = command(r["config"], os.path.join(root, r["name"]), r["params"], extra)
    text = shlex.join(cmd)
    cmds.append(launch.format(cmd=text, name=r["name"]) if launch else text)
    print(cmds[-1], flush=True)
  with open(os.path.join(root, "launch.sh"), "w") as fh:
    fh.write("#!/bin/sh\n# one line per run; submit each on a cluster (they are independent)\n"
             + "\n".join(cmds) + "\n")
  if dry_run:
    return []
  rows = []
  for r in runs:
    workdir = os.path.join(root, r["name"])
    t0 = time.time()
    runner(command(r["config"], workdir, r["params"], extra))
    rows.append(final_row(r, workdir, time.time() - t0))
  if eval_csv:
    rows = join_eval(rows, eval_csv)
  write_tables(rows, root)
  return rows


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


def _define_flags() -> None:
  """Flags are registered only when run as a program, so that importing this module (tests, train.main in the
  same process) defines no flags."""
  flags.DEFINE_string("config", None, "config file:arg (as for train.main)")
  flags.DEFINE_string("sweep", "", 'e.g. "lr=[1e-4,3e-4] ablation=[none,no_reg]"')
  flags.DEFINE_string("sweep_config", "", "configs/sweeps/<name>.py[:arg] defining get_sweep(arg)")
  flags.DEFINE_string("root", "/tmp/r3p_sweep", "root directory of the runs")
  flags.DEFINE_bool("dry_run", False, "only print (and write launch.sh with) the launch commands")
  flags.DEFINE_string("launch", "", "cluster wrapper for the printed commands; {cmd} = the command, {name} = run")
  flags.DEFINE_string("eval_csv", "", "an eval.benchmark table (column 'config' = run name) to join")
  flags.DEFINE_multi_string("set", [], "extra --config.k=v overrides for every run (k=v)")


def main(argv):
  del argv
  f = flags.FLAGS
  runs = expand(f.config, f.sweep, f.sweep_config)
  run_sweep(runs, f.root, extra=f.set, dry_run=f.dry_run, launch=f.launch, eval_csv=f.eval_csv)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
