"""The motion-adapter stage with its SR branch (`model.use_sr`, variant `tiny_sr`; TRAINING §1.3, §2.3).

A micro `tiny_sr` config (render 8², SR 8 → 16 → 32, data 32², global batch 2, one device), RANDOM weights
everywhere (structure and gating, no parity). The default tests compile the G loss (forward + gradient) only; the
whole-train-step check of the two-stage SR-only phase is `slow` (a full step compile takes minutes on 2 cores).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import motion_adapter
from r3p import parallel
from r3p.convert.torch_to_nnx import export_state_dict
from r3p.data import pipeline
from r3p.models.superres import SuperresolutionHybrid8XDC
from tests.train.common import micro_config
from train.loop import make_source
from train.stages import motion_adapter as ma
from train.state import Trainer

START_ADV = 16   # a src2src step (step % 16 == 0), so the ref SR terms are on at both steps tested


def micro_sr_config(**overrides):
  # tests.train.common's micro sizes with the SR variant: render 8², SR 8 -> 16 -> 32 = data 32², batch 2.
  return micro_config("tiny_sr", **{"data.global_batch": 2, "model.render_resolution": 8, "loss.lpips_size": 32,
                                    "optim.start_adv": START_ADV, **overrides})


def _batch(cfg):
  return next(iter(pipeline.make_dataset(make_source(cfg), global_batch=cfg.data.global_batch, seed=cfg.seed)))


def _leaves(tree):
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_variants_and_sr_child():
  assert not motion_adapter.get_config("tiny").model.use_sr   # tiny unchanged: no SR
  full = motion_adapter.get_config("full")
  assert full.model.use_sr and ma.sr_resolution(full) == 512 == full.data.size and ma.d_resolution(full) == 512
  cfg = micro_sr_config()
  assert ma.d_resolution(cfg) == 32
  model = nnx.eval_shape(lambda: ma.build_model(cfg, nnx.Rngs(0)))
  assert isinstance(model.superresolution, SuperresolutionHybrid8XDC)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  groups = {}
  for path, _ in jax.tree_util.tree_leaves_with_path(params):
    groups.setdefault(ma.param_group(tuple(k.key for k in path)), set()).add(str(path[0].key))
  assert groups["sr"] == {"superresolution"} and "superresolution" not in groups["ma"] | groups["decoder"]
  tiny = nnx.eval_shape(lambda: ma.build_model(motion_adapter.get_config("tiny"), nnx.Rngs(0)))
  assert not hasattr(tiny, "superresolution")
  bad = micro_sr_config(**{"data.size": 64})
  with pytest.raises(ValueError, match="4 × model.render_resolution"):
    ma.build_model(bad, nnx.Rngs(0))


def test_full_sr_keys_are_the_released_ones():
  """The released stage-2 SR's torch keys and shapes (MODEL.md §1, EG3D SuperresolutionHybrid8XDC)."""
  sd = export_state_dict(SuperresolutionHybrid8XDC(rngs=nnx.Rngs(0)), prefix="superresolution.")
  want = {"superresolution.block0.conv0.weight": (256, 32, 3, 3), "superresolution.block0.conv0.affine.weight":
          (32, 512), "superresolution.block0.conv0.noise_const": (256, 256),
          "superresolution.block0.torgb.weight": (3, 256, 1, 1), "superresolution.block1.conv0.weight":
          (128, 256, 3, 3), "superresolution.block1.conv1.noise_const": (512, 512),
          "superresolution.block1.torgb.weight": (3, 128, 1, 1), "superresolution.resample_filter": (4, 4)}
  for k, shape in want.items():
    assert tuple(sd[k].shape) == shape, k
  assert all(k.startswith(("superresolution.block0.", "superresolution.block1.", "superresolution.resample"))
             for k in sd)
  n = sum(v.size for k, v in sd.items() if not k.endswith(("noise_const", "resample_filter")))
  assert n == 1_649_578   # block0 + block1 parameters


@pytest.fixture(scope="module")
def loss_fn():
  cfg = micro_sr_config()
  tr = Trainer(cfg, parallel.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]))
  state = tr.init_state()
  batch = jax.tree.map(jnp.asarray, _batch(cfg))

  @jax.jit
  def f(params, step):
    """(grad of the mv adversarial term w.r.t. the G params, metrics, total, d_inputs) at `step`."""
    def g(p):
      model = tr.model_from(p, state["rest"])
      disc = tr.disc_from(state["disc"]["params"], state["disc"]["rest"])
      total, (metrics, _, d_inputs) = ma.g_loss(model, cfg, batch, jax.random.key(0), step, state["lambdas"],
                                                disc=disc)
      return metrics["mv_adv"], (metrics, total, d_inputs)
    return jax.grad(g, has_aux=True)(params)
  return cfg, f, state


def test_sr_loss_terms_finite_and_mv_sr_zero_after_start_adv(loss_fn):
  cfg, f, state = loss_fn
  _, (before, total_b, _) = f(state["params"], jnp.int32(0))
  _, (after, total_a, _) = f(state["params"], jnp.int32(START_ADV))
  before, after = jax.device_get(before), jax.device_get(after)
  sr_terms = ("mv_img_mae", "mv_img_lpips", "ref_img_mae", "ref_img_lpips", "mv_img_lip_mae", "mv_img_lip_lpips",
              "ref_img_lip_mae", "ref_img_lip_lpips")
  for k in sr_terms + ("mv_img_mae_raw", "mv_img_lpips_raw", "ref_img_mae_raw"):
    assert k in before and np.isfinite(before[k]) and before[k] > 0, k
  assert np.isfinite(float(total_b)) and np.isfinite(float(total_a))
  # From start_adv: the mv SR L1/perceptual terms are 0; the ref SR terms, the lip terms and the raw terms stay.
  assert after["mv_img_mae"] == 0.0 and after["mv_img_lpips"] == 0.0
  for k in ("ref_img_mae", "ref_img_lpips", "mv_img_lip_mae", "mv_img_lip_lpips", "mv_img_mae_raw"):
    np.testing.assert_allclose(after[k], before[k], rtol=1e-6, err_msg=k)
  # The lip crops come from the SR image only (no raw lip terms).
  assert not any(k.endswith("_lip_mae_raw") for k in before)


def test_discriminator_judges_the_sr_image(loss_fn):
  cfg, f, state = loss_fn
  grads0, (m0, _, _) = f(state["params"], jnp.int32(0))
  grads, (m, _, d_inputs) = f(state["params"], jnp.int32(START_ADV))
  img, raw, _ = d_inputs["fake"]["mv"]
  assert img.shape == (2, 32, 32, 3) and raw.shape == (2, 8, 8, 3)
  # The SR slot is not the upsampled raw render, and the G's adversarial gradient reaches the SR weights
  # (their only path to the D is the SR slot).
  assert float(jnp.max(jnp.abs(img - ma._resize(raw, 32)))) > 1e-3
  assert float(m["mv_adv"]) > 0 and float(m0["mv_adv"]) == 0.0
  g_sr = _leaves(grads["superresolution"])
  assert max(float(jnp.max(jnp.abs(v))) for v in g_sr.values()) > 0
  assert all(float(jnp.max(jnp.abs(v))) == 0 for v in _leaves(grads0["superresolution"]).values())
  real_img, real_raw, _ = d_inputs["real"]["mv"]
  assert real_img.shape == (2, 32, 32, 3) and real_raw.shape == (2, 8, 8, 3)


@pytest.mark.slow  # compiles the whole train step (several minutes on 2 loaded CPU cores)
def test_train_steps_and_sr_only_phase():
  """4 steps with start_adv = 2: at step 1 every group moves; at steps 2, 3 (two-stage SR-only phase) only the
  SR params change, the D trains, and the mv SR L1 is 0."""
  cfg = micro_sr_config(**{"optim.start_adv": 2, "optim.sr_start": 0, "optim.decoder_start": 0})
  tr = Trainer(cfg, parallel.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]))
  it = iter(pipeline.make_dataset(make_source(cfg), global_batch=cfg.data.global_batch, seed=cfg.seed))
  batches = [next(it) for _ in range(4)]
  step = tr.make_step({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batches[0].items()})
  state = tr.init_state()
  hist = []
  for b in batches:
    before = jax.device_get(state["params"])
    state, m = step(state, parallel.shard_batch(b, tr.mesh))
    m = jax.device_get(m)
    after = jax.device_get(state["params"])
    moved = {g: any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before[g]), jax.tree.leaves(after[g])))
             for g in after}
    hist.append((m, moved))
  for m, _ in hist:
    assert np.isfinite(m["loss/total"]) and m["d/active"] == 1.0
  assert all(hist[1][1].values()), hist[1][1]       # step 1: cano, MA, decoder, SR all move
  for m, moved in hist[2:]:
    assert moved == {"cano_img2plane_backbone": False, "secc_img2plane_backbone": False, "decoder": False,
                     "superresolution": True}, moved
    assert m["loss/mv_img_mae"] == 0.0 and m["lr/sr"] > 0 and m["lr/ma"] == 0.0
  assert hist[1][0]["loss/mv_img_mae"] > 0
