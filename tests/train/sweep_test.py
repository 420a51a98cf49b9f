import csv
import json
import os
import subprocess
import sys

import pytest

from train import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_parse_sweep_product_and_aliases():
  runs = sweep.parse_sweep("lr=[1e-4,3e-4] optim.b2=[0.99,0.999]")
  assert len(runs) == 4
  assert runs[0] == {"optim.lr_g": "1e-4", "optim.b2": "0.99"}
  assert sweep.run_name(runs[1]) == "lr_g=1e-4_b2=0.999"
  with pytest.raises(ValueError, match="cannot parse"):
    sweep.parse_sweep("lr=1e-4")


def test_command_puts_config_args_in_the_config_string():
  cmd = sweep.command("configs/motion_adapter.py:tiny", "/w", {"optim.lr_g": "1e-4", "ablation": "no_reg"})
  assert cmd[cmd.index("--config") + 1] == "configs/motion_adapter.py:tiny,ablation=no_reg"
  assert "--config.optim.lr_g=1e-4" in cmd and cmd[cmd.index("--workdir") + 1] == "/w"
  assert not any(c.startswith("--config.ablation") for c in cmd)
  assert sweep.with_args("c.py:tiny,ablation=a", {"ablation": "b", "variant": "full"}) == "c.py:full,ablation=b"


def test_named_ablation_studies():
  runs = sweep.expand(None, sweep_config="configs/sweeps/ablations.py:htb_sr")
  names = [r["name"] for r in runs]
  assert names[0] == "htb_base" and "htb_no_lip" in names
  assert all(r["config"].startswith("configs/htb_sr.py:tiny") for r in runs)
  full = sweep.expand(None, sweep_config="configs/sweeps/ablations.py:motion_adapter,variant=full")
  assert all(":full" in r["config"] for r in full)
  with pytest.raises(ValueError, match="unknown ablation study"):
    sweep.expand(None, sweep_config="configs/sweeps/ablations.py:nope")
  # every named config resolves (variant and ablation exist in the config file)
  import importlib
  for r in runs + full:
    path, _, arg = r["config"].partition(":")
    mod = importlib.import_module(path[:-3].replace("/", "."))
    cfg = mod.get_config(arg)
    for k in r["params"]:
      node = cfg
      for p in k.split("."):
        node = node[p]


def test_two_run_sweep_writes_tables_and_joins_eval(tmp_path):
  """The whole runner with a stand-in for train.main (writes the history.json a run leaves)."""
  seen = []

  def fake_train(cmd):
    seen.append(cmd)
    workdir = cmd[cmd.index("--workdir") + 1]
    lr = float(next(c for c in cmd if c.startswith("--config.optim.lr_g=")).split("=")[1])
    os.makedirs(workdir)
    json.dump({"step": [10, 20], "loss": [1.0, 1.0 - 1000 * lr]}, open(os.path.join(workdir, "history.json"), "w"))

  runs = sweep.expand("configs/motion_adapter.py:tiny", sweep="lr=[1e-4,3e-4]")
  eval_csv = tmp_path / "bench.csv"
  eval_csv.write_text("config,psnr,lmd\nlr_g=1e-4,20.5,3.25\n")
  rows = sweep.run_sweep(runs, str(tmp_path / "root"), runner=fake_train, eval_csv=str(eval_csv),
                         launch="sbatch --wrap '{cmd}'")
  assert len(seen) == 2
  launch = (tmp_path / "root" / "launch.sh").read_text().splitlines()
  assert sum(line.startswith("sbatch --wrap") for line in launch) == 2
  table = list(csv.DictReader(open(tmp_path / "root" / "results.csv")))
  assert [r["run"] for r in table] == ["lr_g=1e-4", "lr_g=3e-4"]
  assert float(table[1]["final_loss"]) == pytest.approx(0.7) and table[0]["eval/psnr"] == "20.5"
  assert table[1]["eval/psnr"] == ""
  md = (tmp_path / "root" / "results.md").read_text()
  assert "| lr_g=1e-4 |" in md and "| 0.9 |" in md
  assert rows[0]["final_step"] == 20


def test_dry_run_only_prints(tmp_path, capsys):
  runs = sweep.expand("configs/htb_sr.py:tiny", sweep="ablation=[none,no_lip]")
  assert sweep.run_sweep(runs, str(tmp_path), dry_run=True) == []
  out = capsys.readouterr().out
  assert "configs/htb_sr.py:tiny,ablation=no_lip" in out and not (tmp_path / "results.csv").exists()


def test_cli_dry_run_prints_cluster_commands(tmp_path):
  cmd = [sys.executable, "-m", "train.sweep", "--sweep_config", "configs/sweeps/ablations.py:motion_adapter",
         "--root", str(tmp_path), "--dry_run", "--launch", "sbatch --job-name={name} --wrap '{cmd}'"]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  assert len(lines) == 5 and lines[1].startswith("sbatch --job-name=ma_no_reg --wrap")
  assert "configs/motion_adapter.py:tiny,ablation=no_reg" in lines[1]
  assert (tmp_path / "launch.sh").read_text().count("sbatch") == 5


@pytest.mark.slow
def test_real_two_run_sweep(tmp_path):
  cmd = [sys.executable, "-m", "train.sweep", "--config", "configs/motion_adapter.py:tiny", "--sweep",
         "lr=[1e-4,3e-4]", "--root", str(tmp_path)] + [
      f"--set={s}" for s in ("total_steps=4", "log_every=2", "ckpt_every=4", "progress=False", "data.size=32",
                             "model.render_resolution=16", "model.n_coarse=6", "model.n_fine=6")]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
  assert r.returncode == 0, r.stderr[-3000:]
  table = list(csv.DictReader(open(tmp_path / "results.csv")))
  assert [row["run"] for row in table] == ["lr_g=1e-4", "lr_g=3e-4"] and all(row["final_step"] == "4"
                                                                            for row in table)
  assert (tmp_path / "results.md").exists()
