import os

import pytest

from train import sweep


def test_parse_sweep_product_and_aliases():
  runs = sweep.parse_sweep("lr=[1e-4,3e-4] optim.b2=[0.99,0.999]")
  assert len(runs) == 4
  assert runs[0] == {"optim.lr_g": "1e-4", "optim.b2": "0.99"}
  assert sweep.run_name(runs[1]) == "lr_g=1e-4_b2=0.999"
  with pytest.raises(ValueError, match="cannot parse"):
    sweep.parse_sweep("lr=1e-4")


def test_command_and_tables(tmp_path):
  cmd = sweep.command("configs/motion_adapter.py:tiny", "/w", {"optim.lr_g": "1e-4"})
  assert "--config.optim.lr_g=1e-4" in cmd and cmd[cmd.index("--workdir") + 1] == "/w"
  sweep.write_tables([{"run": "a", "final_loss": 0.5}, {"run": "b", "final_loss": 0.25}], str(tmp_path))
  md = open(os.path.join(tmp_path, "results.md")).read()
  assert "| a | 0.5 |" in md and "| b | 0.25 |" in md
  assert open(os.path.join(tmp_path, "results.csv")).read().splitlines()[0] == "run,final_loss"
