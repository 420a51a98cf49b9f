"""The motion-adapter G loss: every configured term is produced and finite; the frozen perceptual nets are not
trainable params and receive no update. RANDOM weights everywhere (no pretrained VGG/I2P): structure only."""
import jax
import numpy as np
import pytest
from flax import nnx

from r3p import parallel
from r3p.data import pipeline
from tests.train.common import micro_config
from train.loop import make_source
from train.stages import motion_adapter as ma
from train.state import Trainer


@pytest.fixture(scope="module")
def setup():
  cfg = micro_config()
  cfg.data.global_batch = 2
  tr = Trainer(cfg, parallel.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]))
  batch = next(iter(pipeline.make_dataset(make_source(cfg), global_batch=2, seed=0)))
  return cfg, tr, batch


def test_g_loss_has_every_term(setup):
  cfg, tr, batch = setup
  state = tr.init_state()
  assert "perceptual" in state["rest"] and "perceptual" not in state["params"]

  @jax.jit
  def f(state, batch):
    model = tr.model_from(state["params"], state["rest"])
    return ma.g_loss(model, cfg, batch, jax.random.key(0), state["step"], state["lambdas"])
  total, (metrics, lambdas) = f(state, batch)
  for k in ("mv_img_mae_raw", "mv_img_lpips_raw", "mv_img_lip_mae", "mv_img_lip_lpips", "ref_img_lpips_raw",
            "ref_img_lip_lpips", "mv_weights_l1_loss", "regularize_density_l1", "regularize_blink_secc_mae"):
    assert k in metrics and np.isfinite(float(metrics[k])), k
  assert float(metrics["mv_img_lpips_raw"]) > 0 and float(metrics["mv_img_lip_mae"]) > 0
  assert np.isfinite(float(total))


@pytest.mark.slow  # compiles the whole train step (~1 min CPU)
def test_frozen_perceptual_weights_unchanged_by_a_step(setup):
  cfg, tr, batch = setup
  state = tr.init_state()
  before = jax.device_get(state["rest"]["perceptual"])
  step = tr.make_step({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()})
  new, m = step(state, parallel.shard_batch(batch, tr.mesh))
  assert np.isfinite(float(m["loss/total"])) and float(m["grad_norm"]) > 0
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(new["rest"]["perceptual"]))):
    np.testing.assert_array_equal(a, b)


def test_ablation_removes_perceptual_nets():
  cfg = micro_config()
  for k, v in {"loss.lpips_raw": 0.0, "loss.lip_lpips": 0.0}.items():
    cfg.loss[k.split(".")[1]] = v
  model = nnx.eval_shape(lambda: ma.build_model(cfg, nnx.Rngs(0)))
  assert not hasattr(model, "perceptual")
