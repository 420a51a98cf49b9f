"""8-device CPU mesh (data=4, fsdp=2) vs 1 device: the same per-step losses (≤1e-5 relative).

Measured (2026-11-25, micro config, /tmp-style drivers described in the training report):
* One step from the *same* state: losses agree to ≤7e-7 relative at every step 0..13 and all params except the
  pre-BatchNorm biases (`fuse_head.linear_c{1..4}.proj.bias`, `mix_vit.norm4.bias`) to ≤1e-3 of their update.
  Those biases have an identically zero true gradient (a constant shift before the head's BatchNorm cancels), so
  their gradient is pure rounding noise that Adam (β1=0, ε=1e-8) normalises into ±lr steps: their one-step
  updates differ by ~100% between meshes. Importance sampling and the 80th-percentile clamp are continuous in
  their inputs (the clamp set is chosen by rank, the inverse-CDF placement is piecewise linear and continuous)
  and are not the amplifier.
* The training map itself is chaotic: on ONE device, a random 1e-7 relative perturbation of the initial params
  grows to 1.9e-5 relative loss difference at step 12 and 2.6e-3 at step 20; +1e-6 on the BN-invariant biases
  alone gives 1.5e-4 at step 20. So any difference in reduction order (GSPMD's partial sums + all-reduce vs one
  local reduction) exceeds 1e-5 after ~10 steps: 8 vs 1 device measured 1.8e-5 at step 9, 1.2e-2 at step 10.
  Meeting the 20-step criterion needs bit-identical arithmetic across mesh shapes (fixed-order per-shard
  gradient sums with an emulated shard split on one device), which this step does not do.
So this test checks the first 8 steps (≤1e-6 measured). The 20-step criterion is NOT met.
"""
import jax
import numpy as np
import pytest

from r3p import parallel
from r3p.data import pipeline
from tests.train.common import micro_config
from train.loop import make_source
from train.state import Trainer

STEPS = 8


def _losses(mesh_shape, devices):
  # The step as measured above (perceptual and lip terms off: they are covered by motion_adapter_test and keep
  # this 2-mesh compile small).
  cfg = micro_config(**{"loss.lpips_raw": 0.0, "loss.lip_lpips": 0.0, "loss.lip_mae": 0.0})
  mesh = parallel.make_mesh(mesh_shape, devices)
  tr = Trainer(cfg, mesh)
  state = tr.init_state()
  it = iter(pipeline.make_dataset(make_source(cfg), global_batch=cfg.data.global_batch, seed=cfg.seed))
  out = []
  step = None
  for _ in range(STEPS):
    b = next(it)
    if step is None:
      step = tr.make_step({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in b.items()})
    state, m = step(state, parallel.shard_batch(b, mesh))
    out.append(float(jax.device_get(m["loss/total"])))
  return np.array(out)


@pytest.mark.slow
def test_8_devices_equal_1_device():
  one = _losses({"data": 1, "fsdp": 1}, jax.devices()[:1])
  eight = _losses({"data": 4, "fsdp": 2}, jax.devices()[:8])
  print("1 device:", one)
  print("8 devices:", eight)
  np.testing.assert_allclose(eight, one, rtol=1e-5)
