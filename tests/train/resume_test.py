"""kill -9 mid-run, restart: the next steps equal an uninterrupted run bit for bit (losses, params, data order).

The state carries the discriminator (params + Adam, inactive in these 30 steps: the tiny D starts at step 190);
its restored state is compared too. NB: with the adversarial phase on from step 0 (`--config.optim.start_adv=0
--config.optim.two_stage_training=False`) this test was measured to FAIL: the first resumed loss differed by
3 ulp (0.6788797975 vs 0.6788799763 at step 21), cause not yet found (in-process save/restore and cross-process
cached-executable re-runs are bit-identical)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, CKPT = 30, 10


def _cmd(workdir):
  return [sys.executable, "-m", "train.main", "--config", "configs/motion_adapter.py:tiny", "--workdir", workdir,
          f"--config.total_steps={STEPS}", f"--config.ckpt_every={CKPT}", "--config.log_every=1",
          "--config.progress=False", "--config.data.size=32", "--config.model.render_resolution=16",
          "--config.model.n_coarse=6", "--config.model.n_fine=6", "--config.async_checkpointing=False"]


def _env(tmp_path):
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return env


def _final_params(workdir):
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, "ckpt", str(STEPS), "state")
  state = ocp.StandardCheckpointer().restore(path)
  return {"params": state["params"], "disc": state["disc"]}   # G params and the whole D state (params + Adam)


@pytest.mark.slow
def test_kill9_resume_is_bit_identical(tmp_path):
  env = _env(tmp_path)
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  subprocess.run(_cmd(a), cwd=ROOT, env=env, check=True, capture_output=True)
  proc = subprocess.Popen(_cmd(b), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 900
  while time.time() < deadline and not os.path.exists(os.path.join(b, "ckpt", str(2 * CKPT), "state")):
    time.sleep(0.2)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  steps = sorted(int(s) for s in os.listdir(os.path.join(b, "ckpt")) if s.isdigit())
  assert steps and steps[-1] < STEPS, f"the run was not interrupted ({steps})"
  subprocess.run(_cmd(b), cwd=ROOT, env=env, check=True, capture_output=True)
  ha = json.load(open(os.path.join(a, "history.json")))
  hb = json.load(open(os.path.join(b, "history.json")))
  assert hb["step"][0] == steps[-1] + 1
  want = dict(zip(ha["step"], ha["loss"]))
  assert [want[s] for s in hb["step"]] == hb["loss"]  # bit for bit
  pa, pb = _final_params(a), _final_params(b)
  import jax
  assert jax.tree.leaves(pa["disc"]["opt"])
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
