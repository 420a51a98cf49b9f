"""The network with the batch sharded over the 8-device CPU mesh vs the 1-device forward.

1. Structure (whole network, compile only): the batch-sharded program has no all-gather — every op, the tri-plane
   and grid-sample gathers included, is partitioned over the batch — and its only collectives are the scalar
   all-reduces of the official batch-global quirks (the "any ray inside the box" test and min/max of the
   invalid-ray fix-up, the EG3D clamp of the composite depth to the batch's min/max sample depth), so those stay
   global. Per-device temp memory at 1 frame per device is checked to be far below the B=8 one-device program
   (measured: 0.65 GB vs 5.35 GB; before the batched-gather fix the indices were all-gathered and each device
   rendered the whole batch, 2.58 GB).
2. Numbers (motion adapter + volume renderer, B=8 different items, seeded weights, recorded-style uniform draws):
   sharded == one device BIT FOR BIT. XLA:CPU rounds a plain reduction differently for a [1,...] (one item per
   device) and an [8,...] operand, and its SPMD pipeline rewrites `a / fy` into `a * (1/fy)` once fy is a per-device
   scalar; the reductions are therefore fixed-order trees (r3p.nn.numerics: LayerNorm, GroupNorm, softmax,
   demodulation, pooling, ray-march sums) and the camera lift multiplies by reciprocals (r3p.render.cameras).
   Before that: planes 2.4e-7, feature image 3.1e-6, final image 6.3e-3 apart.
3. The motion adapter alone: a batch of 4 equals the 4 items run one at a time, bit for bit.
4. (slow) The whole network, B=8: everything up to the SR's last block bit-identical; the final image is NOT, and
   the sharded program is the wrong one. Located 2026-12-04 (scratch probe tapping every SR intermediate inside
   the whole jitted forward): every SR tensor up to block1's inputs is bit-identical; block1's output differs by up
   to 1.4e-2 in exactly its first 1457 pixels (rows 0-2, all 128 channels) on SOME items — items 1, 6, 7 in one
   run, all 8 in another, with the same wrong values each time. Rerunning block1 alone on those (bit-identical)
   inputs, at B=1 or B=8 on one device, reproduces the 1-device result bit for bit; block1 alone sharded over 8
   devices is right (4 of 4 runs), and so was the per-frame program with the canonical planes computed outside it (1 run).
   So XLA:CPU mis-executes a YNNPACK convolution fusion (`__ynn_fusion`) of block1 only inside the large
   8-device program — a runtime fault, not rounding: it persists with `--xla_cpu_multi_thread_eigen=false`; with
   `--xla_cpu_experimental_ynn_fusion_type=` (Eigen convs, no YNN) Eigen's convs round
   differently for 1 and 8 items per device, so nothing is bit-identical any more (renderer features 4e-2 apart
   through the importance sampling). Kept as an xfail with the measured numbers.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from r3p.convert.seeded import load_seeded_state_dict
from r3p.fixture_io import FixtureCase
from r3p.models import portrait
from r3p.models.motion_adapter import fuse_planes
from r3p.render.renderer import render
from tests.conftest import FIXTURES

CASES = sorted(p.parent for p in (FIXTURES / "r3p_model").glob("*/fixture.json")) if FIXTURES.exists() else []
B = 8


def _mesh():
  if len(jax.devices()) < B:
    pytest.skip("needs the 8 fake CPU devices of tests/conftest.py")
  return jax.make_mesh((B,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:B])


def _batch_spec(mesh, x):
  return NamedSharding(mesh, P("data", *([None] * (x.ndim - 1))))


def _tiler(n_items: int, rng: np.random.Generator):
  """tile(x, noise): the fixture's items repeated to B=8 along axis 0, each copy perturbed differently."""
  reps = -(-B // n_items)

  def tile(x, noise):
    x = np.tile(np.asarray(x), (reps,) + (1,) * (x.ndim - 1))[:B]
    return jnp.asarray(x + rng.uniform(-noise, noise, x.shape).astype(np.float32))

  return tile


def _draws(rng: np.random.Generator) -> dict:
  return {"coarse_jitter": jnp.asarray(rng.uniform(size=(B, 128 * 128, 48)).astype(np.float32)),
          "importance_u": jnp.asarray(rng.uniform(size=(B * 128 * 128, 48)).astype(np.float32))}


def test_sharded_program_is_batch_partitioned():
  mesh = _mesh()
  model = nnx.eval_shape(lambda: portrait.OSAvatarSECC_Img2plane_Torso(rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  rep = NamedSharding(mesh, P())
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)

  def sds(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, P("data", *([None] * (len(shape) - 1)))))

  cond = {k: sds(B, 512, 512, 3) for k in ("cond_cano", "cond_src", "cond_tgt", "ref_torso_img", "bg_img")}
  cond.update(segmap=sds(B, 512, 512, 6), kp_s=sds(B, 68, 3), kp_d=sds(B, 68, 3))
  draws = {"coarse_jitter": sds(B, 128 * 128, 48), "importance_u": sds(B * 128 * 128, 48)}

  def fwd(state, img, camera, cond, draws):
    out = nnx.merge(graphdef, state)(img, camera, cond, **draws)
    return out["image"], out["image_depth"]

  compiled = jax.jit(fwd).lower(state, sds(B, 512, 512, 3), sds(B, 25), cond, draws).compile()
  hlo = compiled.as_text()
  assert not re.search(r"\ball-gather(-start)?\(", hlo), "a batch-sized operand is all-gathered (op not partitioned)"
  reduces = re.findall(r"= (\S+) all-reduce(?:-start)?\(", hlo)
  assert reduces and all(t.endswith("[]") for t in reduces), f"only scalar all-reduces expected, got {reduces}"
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < 1.2e9, f"per-device temp {temp / 1e9:.2f} GB: the batch is not split"


def test_sharded_renderer_equals_one_device():
  if not CASES:
    pytest.skip(f"no r3p_model fixtures under {FIXTURES}")
  mesh = _mesh()
  case = FixtureCase(str(CASES[-1]))
  model = portrait.build(load_seeded_state_dict(str(CASES[-1])))
  _, camera, cond = portrait.inputs_from_official(case.inputs)
  rng = np.random.default_rng(0)
  tile = _tiler(camera.shape[0], rng)
  args = (jnp.asarray(rng.normal(size=(B, 3, 256, 256, 32)).astype(np.float32) * 0.5),  # canonical planes
          tile(camera, 0.0),
          {k: tile(cond[k], 0.05) for k in ("cond_cano", "cond_src", "cond_tgt")},
          _draws(rng))
  graphdef, state = nnx.split(model)
  cfg = model.config

  def fwd(state, cano, camera, cond, draws):
    m = nnx.merge(graphdef, state)
    secc = jnp.concatenate([cond["cond_cano"], cond["cond_src"], cond["cond_tgt"]], -1)
    planes = fuse_planes(cano, m.secc_img2plane_backbone(secc), mode=cfg.phase1_plane_fusion_mode)
    r = render(planes, m.decoder, camera, resolution=cfg.neural_rendering_resolution, n_coarse=cfg.num_samples_coarse,
               n_fine=cfg.num_samples_fine, box_warp=cfg.box_warp, **draws)
    return {"planes": planes, **{k: r[k] for k in ("feature_image", "depth_image", "weights_image")}}

  one = jax.tree.map(np.asarray, jax.jit(fwd)(state, *args))
  sharded_args = jax.tree.map(lambda x: jax.device_put(x, _batch_spec(mesh, x)), args)
  out = jax.jit(fwd)(jax.device_put(state, NamedSharding(mesh, P())), *sharded_args)
  assert out["feature_image"].sharding.spec[0] == "data"  # results stay batch-sharded
  many = jax.tree.map(np.asarray, out)
  for k in one:
    d = float(np.abs(one[k].astype(np.float64) - many[k]).max())
    assert d == 0.0, f"{k}: sharded vs 1-device max|Δ| {d:.3e} (expected bit-identical)"
  assert np.abs(one["feature_image"][0] - one["feature_image"][1]).max() > 1e-3  # the items really differ


def test_motion_adapter_batch_equals_items():
  """A batch of 4 SECC inputs gives the same bits as the 4 items one at a time (256² input: small shapes are where
  XLA:CPU's plain reductions round differently)."""
  if not CASES:
    pytest.skip(f"no r3p_model fixtures under {FIXTURES}")
  from r3p.models import motion_adapter
  m = motion_adapter.from_state_dict(load_seeded_state_dict(str(CASES[0])))
  graphdef, state = nnx.split(m)
  f = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))
  x = jax.random.uniform(jax.random.key(0), (4, 256, 256, 9), minval=-1, maxval=1)
  batch = np.asarray(f(state, x))
  items = np.concatenate([np.asarray(f(state, x[i:i + 1])) for i in range(4)])
  np.testing.assert_array_equal(batch, items)


@pytest.mark.slow
def test_sharded_full_network_equals_one_device():
  """Whole forward (I2P, SECC branch, renderer, torso warp, SR), B=8 different items, sharded vs one device
  (~8 min on the idle 2-core CPU, ~12 GB peak). Everything but the final image must be bit-identical; the image
  xfails while XLA:CPU's YNN fault (module docstring, item 4) corrupts block1's first pixels on some devices."""
  if not CASES:
    pytest.skip(f"no r3p_model fixtures under {FIXTURES}")
  mesh = _mesh()
  case = FixtureCase(str(CASES[-1]))
  model = portrait.build(load_seeded_state_dict(str(CASES[-1])))
  img, camera, cond = portrait.inputs_from_official(case.inputs)
  rng = np.random.default_rng(0)
  tile = _tiler(camera.shape[0], rng)
  args = (tile(img, 0.05), tile(camera, 0.0), {k: tile(v, 0.05 if v.ndim == 4 else 0.01) for k, v in cond.items()},
          _draws(rng))
  graphdef, state = nnx.split(model)

  def fwd(state, img, camera, cond, draws):
    out = nnx.merge(graphdef, state)(img, camera, cond, **draws)
    return {k: out[k] for k in ("image", "image_raw", "image_depth", "weights_img", "plane")}

  one = jax.tree.map(np.asarray, jax.jit(fwd)(state, *args))
  sharded_args = jax.tree.map(lambda x: jax.device_put(x, _batch_spec(mesh, x)), args)
  many = jax.tree.map(np.asarray, jax.jit(fwd)(jax.device_put(state, NamedSharding(mesh, P())), *sharded_args))
  assert np.abs(one["image"][0] - one["image"][1]).max() > 1e-3  # the items really differ
  diffs = {k: float(np.abs(one[k].astype(np.float64) - many[k]).max()) for k in one}
  print("sharded vs 1-device max|Δ|:", diffs)
  for k, d in diffs.items():
    if k != "image":
      assert d == 0.0, f"{k}: sharded vs 1-device max|Δ| {d:.3e} (expected bit-identical)"
  if diffs["image"] > 0.0:
    d_img = np.abs(one["image"].astype(np.float64) - many["image"]).max(-1).reshape(B, -1)
    off = [int(np.nonzero(row > 0)[0].max()) if (row > 0).any() else -1 for row in d_img]
    # The known fault touches only each item's first 3 output rows (flat pixel index < 3·512); anything else
    # is a new difference and fails.
    assert max(off) < 3 * 512, f"image differs beyond block1's first rows: last flat pixel per item {off}"
    pytest.xfail(f"final image differs by {diffs['image']:.3e} in the first rows of items "
                 f"{[i for i, o in enumerate(off) if o >= 0]} (XLA:CPU YNN fault, module docstring item 4)")
