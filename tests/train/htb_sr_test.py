"""HTB-SR stage: configs, the frozen head, the lip box, and a tiny run whose SR loss decreases."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import htb_sr as htb_cfg
from r3p import parallel
from r3p.data import pipeline, sources
from train.stages import htb_sr
from train.state import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 24


def micro_config():
  cfg = htb_cfg.get_config("tiny")
  cfg.data.size = 32
  cfg.data.n_items = 16
  cfg.model.render_resolution = 8
  cfg.model.n_coarse = 6
  cfg.model.n_fine = 6
  cfg.model.sr_channels = 16
  cfg.model.sr_w_dim = 8
  cfg.model.torso_feat = 8
  cfg.model.torso_hid = 8
  cfg.progress = False
  cfg.async_checkpointing = False
  return cfg


def test_configs():
  tiny, full = htb_cfg.get_config("tiny"), htb_cfg.get_config("full")
  assert htb_cfg.__doc__.startswith("python -m train.main --config configs/htb_sr.py:tiny")
  assert tiny.stage == "htb_sr" and tiny.data.torso and tiny.data.size == 4 * tiny.model.render_resolution
  assert full.data.size == 512 and full.model.render_resolution == 128 and full.model.n_coarse == 48
  assert full.optim.lr_g == 1e-5 and full.optim.warmup == 4000 and full.optim.decay == 0.5
  assert full.optim.decay_every == 50_000 and full.optim.floor == 1e-6 and full.total_steps == 100_000
  assert full.loss.unmasked_weight == 0.5 and full.loss.lip_mae == 0.2 and full.loss.src2src_interval == 4
  assert htb_cfg.get_config("tiny,ablation=no_lip").loss.lip_mae == 0.0
  assert htb_sr.d_resolution(full) == 512 and full.model.d_size == "full" and full.loss.r1_gamma == 5.0
  assert full.optim.start_adv - full.optim.d_lead == 30_000 and full.loss.mv_adv == full.loss.ref_adv
  with pytest.raises(ValueError, match="unknown variant"):
    htb_cfg.get_config("huge")
  with pytest.raises(ValueError, match="unknown ablation"):
    htb_cfg.get_config("tiny,ablation=nope")
  bad = micro_config()
  bad.data.size = 64
  with pytest.raises(ValueError, match="4 × model.render_resolution"):
    htb_sr.build_model(bad, nnx.Rngs(0))


def test_lr_schedule_of_the_sr_group():
  from train.state import lr_schedules
  sr = lr_schedules(htb_cfg.get_config("full").optim)["sr"]
  assert float(sr(2000)) == pytest.approx(5e-6, rel=1e-6)              # warmup 4000
  assert float(sr(60_000)) == pytest.approx(1e-5 * 0.5, rel=1e-6)      # ×0.5 every 50k
  assert float(sr(10_000_000)) == pytest.approx(1e-6, rel=1e-6)        # floor


def test_lip_box_mask():
  kp = np.zeros((1, 68, 3), np.float32)
  kp[0, 48:60, 0] = np.linspace(-0.25, 0.25, 12)   # lips 0.5 wide, flat: half-size 1.2 × 0.25 = 0.3 (in [-1,1])
  kp[0, 48:60, 1] = 0.5
  m = np.asarray(htb_sr.lip_box_mask(jnp.asarray(kp), 40))[0, ..., 0]
  ys, xs = np.nonzero(m)
  assert m.sum() > 0 and abs(xs.mean() - 19.5) < 0.6 and abs(ys.mean() - 29.5) < 0.6
  assert xs.max() - xs.min() + 1 == pytest.approx(0.6 / 2 * 40, abs=1.5)


@pytest.fixture(scope="module")
def trained():
  cfg = micro_config()
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
  tr = Trainer(cfg, mesh)
  state = tr.init_state()
  head0 = jax.device_get(state["rest"])
  batch = next(iter(pipeline.make_dataset(sources.make_source(cfg), global_batch=2, seed=0)))
  step = tr.make_step({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()})
  hist = []
  for _ in range(STEPS):  # one fixed batch: the SR must fit it
    state, m = step(state, parallel.shard_batch(batch, mesh))
    hist.append({k: float(v) for k, v in jax.device_get(m).items()})
  return tr, head0, jax.device_get(state["rest"]), hist


def test_only_the_sr_trains(trained):
  tr, head0, head1, hist = trained
  assert list(tr.abstract_state["params"]) == ["superresolution"]
  # The D (own state) judges the SR output at the data resolution; before start_adv − d_lead nothing adversarial.
  assert tr.abstract_state["disc"]["params"]["b32"]["fromrgb"]["weight"].shape[2] == 6
  assert all(h["d/active"] == 0 and h["loss/mv_adv"] == 0 and h["d/total"] == 0 for h in hist)
  assert set(tr.abstract_state["rest"]) >= set(htb_sr.HEAD)
  for a, b in zip(jax.tree.leaves(head0), jax.tree.leaves(head1)):
    np.testing.assert_array_equal(a, b)   # frozen head weights and BN statistics unchanged


def test_tiny_loss_decreases(trained):
  *_, hist = trained
  fit = [h["loss/mv_img_mae"] + 0.2 * h["loss/mv_img_lip_mae"] for h in hist]
  print("mv loss per step:", np.round(fit, 4).tolist())
  assert all(np.isfinite(fit))
  assert np.mean(fit[-4:]) < 0.8 * np.mean(fit[:2]), fit


@pytest.mark.slow
def test_train_main_cli(tmp_path):
  cmd = [sys.executable, "-m", "train.main", "--config", "configs/htb_sr.py:tiny", "--workdir", str(tmp_path),
         "--config.total_steps=4", "--config.ckpt_every=2", "--config.log_every=2", "--config.progress=False",
         "--config.data.size=32", "--config.model.render_resolution=8", "--config.model.n_coarse=6",
         "--config.model.n_fine=6", "--config.async_checkpointing=False"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
  assert r.returncode == 0, r.stderr[-3000:]
  hist = json.load(open(tmp_path / "history.json"))
  assert hist["step"][-1] == 4 and all(np.isfinite(hist["loss"]))
  assert sorted(int(s) for s in os.listdir(tmp_path / "ckpt") if s.isdigit())[-1] == 4


@pytest.mark.slow  # a whole HTB-SR step compile with the D
def test_adversarial_phase_d_step_and_lazy_r1():
  cfg = micro_config()
  cfg.optim.start_adv = 0
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
  tr = Trainer(cfg, mesh)
  state = tr.init_state()
  state["step"] = jax.device_put(jnp.int32(14), tr.state_shardings["step"])
  batch = next(iter(pipeline.make_dataset(sources.make_source(cfg), global_batch=2, seed=0)))
  step = tr.make_step({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()})
  d0 = jax.device_get(state["disc"]["params"])
  ms = []
  for _ in range(3):   # steps 14, 15 (lazy R1), 16 (src2src)
    state, m = step(state, parallel.shard_batch(batch, mesh))
    ms.append({k: float(v) for k, v in jax.device_get(m).items()})
  for m in ms:
    assert all(np.isfinite(list(m.values()))) and m["d/active"] == 1 and m["loss/mv_adv"] > 0
    assert m["d/maximize_gt_mv"] > 0 and m["d/minimize_fake_mv"] > 0
  assert [m["d/r1"] > 0 for m in ms] == [False, True, False]
  assert ms[2]["loss/ref_adv"] > 0 and ms[0]["loss/ref_adv"] == 0
  moved = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(d0),
                                                        jax.tree.leaves(jax.device_get(state["disc"]["params"])))]
  assert max(moved) > 0


@pytest.mark.slow
def test_full_model_names_mirror_the_official_prefixes():
  cfg = htb_cfg.get_config("full")
  model = nnx.eval_shape(lambda: htb_sr.build_model(cfg, nnx.Rngs(0)))
  _, params, rest = nnx.split(model, nnx.Param, ...)
  names = {".".join(map(str, k)) for k, _ in nnx.to_flat_state(params)}
  assert all(n.startswith("superresolution.") for n in names)
  for k in ("superresolution.block0.conv0.weight", "superresolution.torso_model.appearance_extractor.down.0.",
            "superresolution.torso_model.motion_field_estimator.", "superresolution.fuse_fg_bg_convs.0.weight",
            "superresolution.block1.torgb.weight"):
    assert any(n.startswith(k) for n in names), k
  frozen = {".".join(map(str, k)) for k, v in nnx.to_flat_state(rest) if isinstance(v, htb_sr.Frozen)}
  assert any(n.startswith("decoder.") for n in frozen) and any(n.startswith("cano_img2plane_backbone.")
                                                              for n in frozen)


def test_load_head_from_a_stage2_checkpoint(tmp_path):
  from r3p.checkpoint import Checkpointer
  rng = np.random.default_rng(0)
  w = {n: {"w": rng.normal(size=(3, 2)).astype(np.float32)} for n in htb_sr.HEAD}
  bn = {"mean": rng.normal(size=(2,)).astype(np.float32)}
  saved = {"step": np.int32(7), "params": {**w, "superresolution": {"x": np.ones(2, np.float32)}},
           "rest": {"secc_img2plane_backbone": {"bn": bn}}, "opt": {}, "lambdas": {}}
  ck = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  ck.save(7, jax.tree.map(jnp.asarray, saved), {"it": 1}, force=True)
  ck.close()
  rest = {n: {"w": jnp.zeros((3, 2))} for n in htb_sr.HEAD}
  rest["secc_img2plane_backbone"]["bn"] = {"mean": jnp.zeros(2)}
  rest["other"] = jnp.ones(4)
  out = htb_sr.load_head(rest, str(tmp_path))
  for n in htb_sr.HEAD:
    np.testing.assert_array_equal(out[n]["w"], w[n]["w"])
  np.testing.assert_array_equal(out["secc_img2plane_backbone"]["bn"]["mean"], bn["mean"])
  np.testing.assert_array_equal(out["other"], np.ones(4))
  rest["decoder"]["w"] = jnp.zeros((4, 2))
  with pytest.raises(ValueError, match=r"decoder.w has shape \(3, 2\), expected \(4, 2\)"):
    htb_sr.load_head(rest, str(tmp_path))
  rest["decoder"] = {"v": jnp.zeros(1)}
  with pytest.raises(KeyError, match="decoder lacks"):
    htb_sr.load_head(rest, str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    htb_sr.load_head(rest, str(tmp_path / "none"))


def test_load_sr_blocks_copies_the_stage2_head_sr():
  rng = np.random.default_rng(1)
  live = {"superresolution": {"block0": {"w": jnp.zeros((2, 3))}, "block1": {"w": jnp.zeros((4,))},
                              "bg_encoder": {"w": jnp.zeros((5,))}}, "other": jnp.ones(2)}
  src = {"superresolution": {"block0": {"w": rng.normal(size=(2, 3)).astype(np.float32)},
                             "block1": {"w": rng.normal(size=(4,)).astype(np.float32)}}}
  out, names = htb_sr.load_sr_blocks(live, src)
  assert names == ["block0", "block1"]
  np.testing.assert_array_equal(out["superresolution"]["block0"]["w"], src["superresolution"]["block0"]["w"])
  np.testing.assert_array_equal(out["superresolution"]["block1"]["w"], src["superresolution"]["block1"]["w"])
  np.testing.assert_array_equal(out["superresolution"]["bg_encoder"]["w"], np.zeros(5))   # new parts stay at init
  np.testing.assert_array_equal(out["other"], np.ones(2))
  same, none = htb_sr.load_sr_blocks(live, {"decoder": {}})          # a stage-2 run without SR: nothing copied
  assert none == [] and same is live
  src["superresolution"]["block1"]["w"] = np.zeros((3,), np.float32)
  with pytest.raises(ValueError, match=r"superresolution.block1.w has shape \(3,\), expected \(4,\)"):
    htb_sr.load_sr_blocks(live, src)


def test_tiny_sr_blocks_fit_the_tiny_htb_sr_at_its_widths():
  """`configs/motion_adapter.py:tiny_sr` -> `configs/htb_sr.py:tiny --config.model.sr_channels=16`: the head SR
  blocks have the same names and shapes, so `init_from` carries them over."""
  from configs import motion_adapter as ma_cfg
  from train.stages import motion_adapter

  def shapes(model):
    flat = nnx.to_flat_state(nnx.state(model.superresolution, nnx.Param))
    return {k: v.get_value().shape for k, v in flat if str(k[0]) in htb_sr.SR_BLOCKS}

  ma = nnx.eval_shape(lambda: motion_adapter.build_model(ma_cfg.get_config("tiny_sr"), nnx.Rngs(0)))
  hcfg = htb_cfg.get_config("tiny")
  hcfg.model.sr_channels = 16
  htb = nnx.eval_shape(lambda: htb_sr.build_model(hcfg, nnx.Rngs(0)))
  a, b = shapes(ma), shapes(htb)
  assert a and a == b, sorted(set(a.items()) ^ set(b.items()))[:6]


def test_main_runs_the_stage_load_pretrained_hook_once():
  import types

  from train import main as main_lib

  class Base:
    def __init__(self, stage, cfg):
      self.stage, self.cfg = stage, cfg

    def init_state(self):
      return {"n": 0}

  stage = types.SimpleNamespace(load_pretrained=lambda cfg, state, tr: {"n": state["n"] + 1})
  loop = types.SimpleNamespace(Trainer=Base, train=lambda cfg, workdir: None)
  main_lib._install_load_pretrained(loop)
  main_lib._install_load_pretrained(loop)  # idempotent
  assert loop.Trainer(stage, None).init_state() == {"n": 1}
  # a loop that calls the hook itself is left alone
  def train(cfg, workdir):
    return trainer.stage.load_pretrained(cfg, None, None)  # noqa: F821
  loop2 = types.SimpleNamespace(Trainer=Base, train=train)
  main_lib._install_load_pretrained(loop2)
  assert loop2.Trainer is Base


def test_torso_warp_deformation_occlusion_grad_scale():
  """The released torso warp scales the deformation/occlusion gradients ×0.1 (`v*0.1 + v.detach()*0.9`)."""
  from r3p.models.torso_warp import _grad_scale_identity
  v = jax.random.normal(jax.random.key(0), (256,))
  np.testing.assert_allclose(np.asarray(_grad_scale_identity(v)), np.asarray(v), rtol=3e-7, atol=0)
  g = jax.grad(lambda x: jnp.sum(3.0 * _grad_scale_identity(x)))(v)
  np.testing.assert_allclose(np.asarray(g), 0.3, rtol=1e-6)
