"""The network with the batch sharded over the 8-device CPU mesh vs the 1-device forward.

1. Structure (whole network, compile only): the batch-sharded program has no all-gather — every op, the tri-plane
   and grid-sample gathers included, is partitioned over the batch — and its only collectives are the scalar
   all-reduces of the official batch-global quirks (the "any ray inside the box" test and min/max of the
   invalid-ray fix-up, the EG3D clamp of the composite depth to the batch's min/max sample depth), so those stay
   global. Per-device temp memory at 1 frame per device is checked to be far below the B=8 one-device program
   (measured: 0.65 GB vs 5.35 GB; before the batched-gather fix the indices were all-gathered and each device
   rendered the whole batch, 2.58 GB).
2. Numbers (motion adapter + volume renderer, B=8 different items, seeded weights, recorded-style uniform draws):
   sharded == one device within fp32 rounding. Measured max|Δ|: fused planes 2.4e-7, feature image 3.1e-6,
   depth 1.9e-6, weights 1.8e-6 (XLA:CPU rounds some reductions differently for a [8,...] and a [1,...] operand;
   not bit-exact). The issue's 1e-6 on the final 512² image is NOT met: after the super-resolution the final image
   differed by 6.3e-3 (max, measured once, full network, B=8) — most likely the SR's hard head/torso threshold on
   the weights (0.9) flipping pixels on these rounding differences; not yet confirmed (see the closing note).
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
TOL = 1e-5  # fp32 rounding of the renderer outputs (depth ~2.7: one ulp is 2.4e-7)


def _mesh():
  if len(jax.devices()) < B:
    pytest.skip("needs the 8 fake CPU devices of tests/conftest.py")
  return jax.make_mesh((B,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:B])


def _batch_spec(mesh, x):
  return NamedSharding(mesh, P("data", *([None] * (x.ndim - 1))))


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
  reps = -(-B // camera.shape[0])

  def tile(x, noise):  # fixture items tiled to 8, each perturbed differently
    x = np.tile(np.asarray(x), (reps,) + (1,) * (x.ndim - 1))[:B]
    return jnp.asarray(x + rng.uniform(-noise, noise, x.shape).astype(np.float32))

  args = (jnp.asarray(rng.normal(size=(B, 3, 256, 256, 32)).astype(np.float32) * 0.5),  # canonical planes
          tile(camera, 0.0),
          {k: tile(cond[k], 0.05) for k in ("cond_cano", "cond_src", "cond_tgt")},
          {"coarse_jitter": jnp.asarray(rng.uniform(size=(B, 128 * 128, 48)).astype(np.float32)),
           "importance_u": jnp.asarray(rng.uniform(size=(B * 128 * 128, 48)).astype(np.float32))})
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
    assert d <= TOL, f"{k}: sharded vs 1-device max|Δ| {d:.3e} > {TOL:g}"
  assert np.abs(one["feature_image"][0] - one["feature_image"][1]).max() > 1e-3  # the items really differ
