"""Evaluate a list of (source, driving) pairs per config: one metric row per config (a sweep's results table).

    python -m eval.benchmark --config bench.json --out table.csv [--weights_dir DIR | --random_weights]

bench.json:
  {"pairs": [{"name": "may", "src_img": "src.png", "gt": "drv.mp4", "audio": "drv.wav"}, ...],
   "configs": [{"name": "ckpt_100k", "pred": "out/{config}/{pair}.mp4",
                "infer": ["--torso_ckpt", "ckpts/100k"]}, ...]}

For each config and pair the prediction `pred` (a pattern with {config} and {pair}) is generated first with
`python -m r3p.infer --src_img SRC --drv_aud AUDIO|--drv_pose GT <infer args> --out_name PRED` when the config has
`infer` args and the file does not exist yet, then evaluated with `eval.metrics`; the row of a config is the mean
of each summary metric over its pairs. Output: CSV (`config, <metric>...`) and the same table as markdown on stdout.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np


def _infer(cfg: dict, pair: dict, pred: str) -> None:
  cmd = [sys.executable, "-m", "r3p.infer", "--src_img", pair["src_img"]]
  cmd += ["--drv_aud", pair["audio"]] if pair.get("audio") else ["--drv_pose", pair["gt"]]
  cmd += list(cfg["infer"]) + ["--out_name", pred]
  os.makedirs(os.path.dirname(os.path.abspath(pred)), exist_ok=True)
  r = subprocess.run(cmd)
  if r.returncode != 0 or not os.path.exists(pred):
    raise RuntimeError(f"config {cfg['name']}, pair {pair['name']}: r3p infer failed (exit {r.returncode})")


def main(argv=None) -> int:
  from eval import metrics
  ap = argparse.ArgumentParser(prog="python -m eval.benchmark", description=__doc__.split("\n\n")[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--out", required=True, help="CSV table, one row per config")
  ap.add_argument("--metrics", default=None)
  ap.add_argument("--weights_dir")
  ap.add_argument("--random_weights", action="store_true")
  ap.add_argument("--landmarker")
  ap.add_argument("--bfm_dir")
  a = ap.parse_args(argv)
  try:
    with open(a.config) as f:
      spec = json.load(f)
    pairs, configs = spec["pairs"], spec["configs"]
  except (OSError, ValueError, KeyError) as e:
    print(f"eval.benchmark: error: {a.config}: {e}", file=sys.stderr)
    return 2
  rows, cols = [], []
  workdir = os.path.splitext(os.path.abspath(a.out))[0] + "_runs"
  for cfg in configs:
    vals: dict[str, list[float]] = {}
    for pair in pairs:
      pred = cfg["pred"].format(config=cfg["name"], pair=pair["name"])
      try:
        if not os.path.exists(pred) and cfg.get("infer") is not None:
          _infer(cfg, pair, pred)
      except RuntimeError as e:
        print(f"eval.benchmark: error: {e}", file=sys.stderr)
        return 2
      res_path = os.path.join(workdir, cfg["name"], f"{pair['name']}.json")
      args = ["--pred", pred, "--out", res_path, "--quiet"]
      for k in ("gt", "src_img", "audio"):
        if pair.get(k):
          args += [f"--{k}", pair[k]]
      for k in ("metrics", "weights_dir", "landmarker", "bfm_dir"):
        if getattr(a, k):
          args += [f"--{k}", getattr(a, k)]
      if a.random_weights:
        args.append("--random_weights")
      if metrics.main(args) != 0:
        print(f"eval.benchmark: error: config {cfg['name']}, pair {pair['name']}: evaluation failed", file=sys.stderr)
        return 2
      with open(res_path) as f:
        for k, v in json.load(f)["summary"].items():
          vals.setdefault(k, []).append(float(v))
          if k not in cols:
            cols.append(k)
    rows.append((cfg["name"], {k: float(np.mean(v)) for k, v in vals.items()}))
  tmp = a.out + ".tmp"
  with open(tmp, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["config"] + cols)
    for name, r in rows:
      w.writerow([name] + [f"{r[c]:.6g}" if c in r else "" for c in cols])
  os.replace(tmp, a.out)
  print("| config | " + " | ".join(cols) + " |")
  print("|---" * (len(cols) + 1) + "|")
  for name, r in rows:
    print(f"| {name} | " + " | ".join(f"{r[c]:.4g}" if c in r else "" for c in cols) + " |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
