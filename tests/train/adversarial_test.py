"""The adversarial part of the motion-adapter step: D update, lazy R1, G adversarial gating, D in the state.

Micro config with `optim.start_adv` = 0 (and `two_stage_training` off so that the G still trains in the adversarial
phase: the tiny model has no SR), global batch 2, RANDOM weights (structure and maths, no parity). The default
tests compile only the small D step and the G-loss forward; the whole-train-step checks (R1 on the lazy step
inside the jitted step, 8 devices vs 1) are `slow` (each step compile takes minutes on 2 CPU cores).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r3p import checkpoint as ckpt_lib
from r3p import parallel
from r3p.data import pipeline
from r3p.losses import adversarial
from tests.train.common import micro_config
from train.loop import make_source
from train.stages import motion_adapter as ma
from train.state import Trainer, d_lr_schedule

ADV = {"optim.start_adv": 0, "optim.two_stage_training": False}
# The default tests leave the perceptual and lip terms out (covered by motion_adapter_test): a smaller compile.
LIGHT = {"loss.lpips_raw": 0.0, "loss.lip_lpips": 0.0, "loss.lip_mae": 0.0}


def _batch(cfg, n=1):
  it = iter(pipeline.make_dataset(make_source(cfg), global_batch=cfg.data.global_batch, seed=cfg.seed))
  return [next(it) for _ in range(n)]


@pytest.fixture(scope="module")
def setup():
  cfg = micro_config(**ADV, **LIGHT)
  cfg.data.global_batch = 2
  tr = Trainer(cfg, parallel.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]))
  batch = jax.tree.map(jnp.asarray, _batch(cfg)[0])
  res = ma.d_resolution(cfg)
  rs = lambda x: ma._resize(x, res)  # noqa: E731
  # D inputs as the stage builds them: reals = GT frames, fake = a corrupted mv frame (fixed across steps).
  fake = jnp.clip(rs(batch["tgt_img"])[:, ::-1] * 0.5 + 0.3, -1, 1)
  d_inputs = {"real": {"ref": (rs(batch["ref_img"]), rs(batch["ref_img"]), batch["ref_camera"]),
                       "mv": (rs(batch["tgt_img"]), rs(batch["tgt_img"]), batch["tgt_camera"])},
              "fake": {"mv": (fake, fake, batch["tgt_camera"])}}
  state = tr.init_state()
  d_update = jax.jit(tr.d_update)
  return cfg, tr, batch, d_inputs, state, d_update


def test_d_state_and_optimizer(setup):
  cfg, tr, _, _, state, _ = setup
  assert set(state["disc"]) == {"params", "rest", "opt"}
  assert "b4" in state["disc"]["params"] and "mapping" in state["disc"]["params"]
  # tiny D at the render resolution (no SR): first block b16 takes the 6-channel image ⊕ raw.
  assert state["disc"]["params"]["b16"]["fromrgb"]["weight"].shape == (1, 1, 6, 16)
  o = cfg.optim
  c = 16 / 17
  np.testing.assert_allclose(float(d_lr_schedule(o)(0)), o.lr_d * c, rtol=1e-6)
  big = 10 ** 6
  np.testing.assert_allclose(float(d_lr_schedule(o)(big)), o.floor, rtol=1e-6)   # the floor
  np.testing.assert_allclose(float(d_lr_schedule(o)(o.decay_every)), o.lr_d * c * o.decay, rtol=1e-6)


def test_d_losses_finite_and_r1_only_on_lazy_steps(setup):
  _, _, _, d_inputs, state, d_update = setup
  ds = state["disc"]
  seen = {}
  for step in (13, 14, 15, 16, 31):
    _, m = d_update(ds, d_inputs, jax.random.key(0), jnp.int32(step))
    m = jax.device_get(m)
    assert all(np.isfinite(v) for v in m.values()), m
    for k in ("d/maximize_gt_ref", "d/maximize_gt_mv", "d/minimize_fake_mv", "d/total", "d/grad_norm"):
      assert float(m[k]) > 0, (step, k)
    seen[step] = float(m["d/r1"])
    assert float(m["d/active"]) == 1.0
  assert seen[15] > 0 and seen[31] > 0
  assert seen[13] == seen[14] == seen[16] == 0.0


def test_r1_equals_hand_computed_gradient_penalty(setup):
  cfg, tr, _, d_inputs, state, d_update = setup
  key = jax.random.key(3)
  _, m = d_update(state["disc"], d_inputs, key, jnp.int32(15))
  d = tr.disc_from(state["disc"]["params"], state["disc"]["rest"])
  # Hand check: the entry keys are fold_in(key, i) over the reals in sorted order (mv, ref), then the fakes.
  want = 0.0
  for i, name in enumerate(sorted(d_inputs["real"])):
    img, raw, c = d_inputs["real"][name]
    cn = adversarial.noisy_camera(c, jax.random.fold_in(key, i), cfg.model.disc_c_noise)
    gi, gr = jax.grad(lambda a, b: jnp.sum(d(a, b, cn)), argnums=(0, 1))(img, raw)
    pen = 0.5 * (np.mean(np.sum(np.square(np.asarray(gi)), axis=(1, 2, 3)))
                 + np.mean(np.sum(np.square(np.asarray(gr)), axis=(1, 2, 3))))
    np.testing.assert_allclose(float(m[f"d/r1_gt_{name}"]), pen, rtol=1e-5)
    want += pen
  np.testing.assert_allclose(float(m["d/r1"]), want, rtol=1e-5)
  # The weighted R1 (γ·interval = 80) is part of d/total.
  main = sum(float(m[k]) for k in ("d/maximize_gt_ref", "d/maximize_gt_mv", "d/minimize_fake_mv"))
  np.testing.assert_allclose(float(m["d/total"]), main + 80 * want, rtol=1e-5)


def test_d_update_direction(setup):
  _, _, _, d_inputs, state, d_update = setup
  ds = jax.tree.map(lambda x: x, state["disc"])
  first = None
  for step in range(6):   # steps 0..5: no R1
    ds, m = d_update(ds, d_inputs, jax.random.key(step), jnp.int32(step))
    first = first or jax.device_get(m)
  _, last = d_update(ds, d_inputs, jax.random.key(0), jnp.int32(6))   # metrics of the updated D
  real = lambda mm: float(mm["d/logits_real_ref"] + mm["d/logits_real_mv"])  # noqa: E731
  assert real(last) > real(first), (real(first), real(last))
  assert float(last["d/logits_fake_mv"]) < float(first["d/logits_fake_mv"])
  assert float(last["d/total"]) < float(first["d/total"])


def test_d_inactive_before_its_start_leaves_d_untouched(setup):
  _, _, _, d_inputs, state, _ = setup
  late = micro_config(**{"optim.start_adv": 50, "optim.d_lead": 10}, **LIGHT)
  late.data.global_batch = 2
  tr = Trainer(late, parallel.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]))
  ds = state["disc"]   # same D structure as this config's
  d_update = jax.jit(tr.d_update)
  new, m = d_update(ds, d_inputs, jax.random.key(0), jnp.int32(39))   # 39 < 50 − 10
  assert float(m["d/active"]) == 0.0 and float(m["d/total"]) == 0.0 and float(m["lr/d"]) == 0.0
  for a, b in zip(jax.tree.leaves(ds), jax.tree.leaves(new)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))   # params and Adam state (count) unchanged
  new, m = d_update(ds, d_inputs, jax.random.key(0), jnp.int32(40))
  assert float(m["d/active"]) == 1.0
  assert int(new["opt"][1].count) == 1   # (clip, Adam) chain


def test_g_adversarial_weight_zero_before_start_adv(setup):
  cfg, tr, batch, _, state, _ = setup
  before = micro_config(**{"optim.start_adv": 5}, **LIGHT)
  before.data.global_batch = 2

  @jax.jit
  def losses(state, batch):
    model = tr.model_from(state["params"], state["rest"])
    disc = tr.disc_from(state["disc"]["params"], state["disc"]["rest"])
    key, step = jax.random.key(0), jnp.int32(0)
    plain, (m0, _) = ma.g_loss(model, before, batch, key, step, state["lambdas"])
    gated, (m1, _, d_inputs) = ma.g_loss(model, before, batch, key, step, state["lambdas"], disc=disc)
    on, (m2, _, _) = ma.g_loss(model, cfg, batch, key, step, state["lambdas"], disc=disc)
    return plain, gated, on, m1["mv_adv"], m2["mv_adv"], m2["ref_adv"], d_inputs

  plain, gated, on, adv_off, adv_mv, adv_ref, d_inputs = jax.device_get(losses(state, batch))
  assert float(adv_off) == 0.0
  np.testing.assert_allclose(gated, plain, rtol=1e-6)        # the D-less G loss (measured: bit-identical)
  assert float(adv_mv) > 0 and float(adv_ref) > 0            # step 0 is a src2src step
  lw = cfg.loss
  np.testing.assert_allclose(on, plain + lw.mv_adv * adv_mv + lw.ref_adv * adv_ref, rtol=1e-5)
  # D inputs: reals ref/mv and the mv fake, each (img at D res, raw at render res, camera [B,25]).
  res = cfg.model.render_resolution
  assert sorted(d_inputs["real"]) == ["mv", "ref"] and sorted(d_inputs["fake"]) == ["mv"]
  for img, raw, c in [*d_inputs["real"].values(), *d_inputs["fake"].values()]:
    assert img.shape == (2, res, res, 3) and raw.shape == (2, res, res, 3) and c.shape == (2, 25)


def test_checkpoint_round_trip_keeps_the_d_state(setup, tmp_path):
  _, tr, _, _, state, _ = setup
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  ck.save(1, state, {"pos": 0}, force=True)
  ck.wait()
  restored, _ = ck.restore(tr.abstract_sharded_state())
  ck.close()
  assert set(restored["disc"]) == {"params", "rest", "opt"}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------ whole jitted step (slow)

def _run_steps(mesh_shape, devices, start_step, n, global_batch):
  cfg = micro_config(**ADV)
  cfg.data.global_batch = global_batch
  mesh = parallel.make_mesh(mesh_shape, devices)
  tr = Trainer(cfg, mesh)
  state = tr.init_state()
  state["step"] = jax.device_put(jnp.int32(start_step), tr.state_shardings["step"])
  batches = _batch(cfg, n)
  step = tr.make_step({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batches[0].items()})
  out = []
  for b in batches:
    state, m = step(state, parallel.shard_batch(b, mesh))
    out.append(jax.device_get(m))
  return out


@pytest.mark.slow  # one whole-step compile (~2.5 min on 2 busy CPU cores)
def test_step_logs_d_terms_and_r1_on_the_lazy_step():
  ms = _run_steps({"data": 1, "fsdp": 1}, jax.devices()[:1], 14, 3, 2)   # steps 14, 15, 16
  for m in ms:
    assert all(np.isfinite(v) for v in m.values())
    assert float(m["d/active"]) == 1 and float(m["loss/mv_adv"]) > 0 and float(m["d/total"]) > 0
  assert [float(m["d/r1"]) > 0 for m in ms] == [False, True, False]


@pytest.mark.slow  # two whole-step compiles (1 and 8 devices)
def test_8_devices_equal_1_device_with_d():
  one = _run_steps({"data": 1, "fsdp": 1}, jax.devices()[:1], 14, 3, 8)
  eight = _run_steps({"data": 4, "fsdp": 2}, jax.devices()[:8], 14, 3, 8)
  keys = ["loss/total", "loss/mv_adv", "d/total", "d/r1", "d/maximize_gt_mv", "d/minimize_fake_mv"]
  for a, b in zip(one, eight):
    for k in keys:
      np.testing.assert_allclose(float(b[k]), float(a[k]), rtol=1e-5, err_msg=k)
  assert float(one[1]["d/r1"]) > 0

