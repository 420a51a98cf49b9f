"""Parity of the canonical I2P backbone (`cano_img2plane_backbone`) against the r3p_model fixtures.

Tolerances (fixtures/r3p_model/README.md), relative to the record's max |value|:
  - one module fed its own recorded inputs (teacher forcing, unit records): 1e-4;
  - records reached through a chain of my own outputs (whole forward): 2e-4;
  - the planes additionally 1e-3 absolute.
The low-res encoder and the high-res encoder are fed the source image of `inputs.npz` (stored whole) plus the
coordinate channels, so they are teacher-forced (1e-4). The module-boundary records of the I2P are probed (not
whole) except the `unit:` windows of the tri-plane predictor, which are fed as is.
"""
from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r3p.convert.seeded import load_seeded_state_dict
from r3p.convert.torch_to_nnx import StateDictError, load_state_dict
from r3p.fixture_io import FixtureCase, nchw_to_nhwc, nhwc_to_nchw
from r3p.models.img2plane import UNUSED_KEYS, Img2PlaneModel, build_for_loading, coordinate_channels
from r3p.models.planes import planes_to_torch
from tests.conftest import FIXTURES

P = "cano_img2plane_backbone"
TOL_UNIT = 1e-4
TOL_CHAIN = 2e-4
TOL_PLANES_ABS = 1e-3


def _i2p_case_dirs():
  root = FIXTURES / "r3p_model"
  if not root.exists():
    return []
  out = []
  for d in sorted(root.iterdir()):
    if not (d / "fixture.json").exists() or not (d / "case.json").exists():
      continue
    with open(d / "case.json") as f:
      mods = json.load(f).get("modules", {})
    if any(n.startswith(P + "/") or n.startswith(P + ".") or n.startswith("unit:" + P) for n in mods):
      out.append(d)
  return out


CASE_DIRS = _i2p_case_dirs()
if not CASE_DIRS:
  pytest.skip(f"no r3p_model fixture case with {P} records under {FIXTURES} (shared fixtures missing)",
              allow_module_level=True)


def _load(case_dir, **kw) -> Img2PlaneModel:
  model = build_for_loading(**kw)
  load_state_dict(model, load_seeded_state_dict(str(case_dir)), prefix=P + ".", unused=UNUSED_KEYS)
  return model


@pytest.fixture(scope="module", params=CASE_DIRS, ids=lambda d: d.name)
def setup(request):
  """(case, fp32 model, image NHWC) per case; the model is loaded once per module."""
  case = FixtureCase(str(request.param))
  return case, _load(request.param), nchw_to_nhwc(case.inputs["img"])


def _check(case, mine_nchw, name, tol_rel, tol_abs=None, report=None):
  d, rel = case.compare(np.asarray(mine_nchw), name)
  if report is not None:
    report[name] = (d, rel)
  print(f"{case.name} {name}: max|Δ|={d:.3e} rel={rel:.3e} (tol rel {tol_rel:g})")
  assert rel <= tol_rel, f"{name}: max|Δ| {d:.3e} = {rel:.3e} of max|ref| > {tol_rel:g}"
  if tol_abs is not None:
    assert d <= tol_abs, f"{name}: max|Δ| {d:.3e} > {tol_abs:g}"


def test_loads_every_key_and_rejects_missing():
  sd = load_seeded_state_dict(str(CASE_DIRS[0]))
  model = build_for_loading()
  loaded = load_state_dict(model, sd, prefix=P + ".", unused=UNUSED_KEYS)
  mine = {k for k in sd if k.startswith(P + ".")}
  assert set(loaded) == mine - {P + "." + k for k in UNUSED_KEYS}
  assert len(loaded) == 361  # MODEL.md §4: 361 state_dict tensors below cano_img2plane_backbone
  nparams = sum(int(np.prod(v.shape)) for k, v in sd.items()
                if k.startswith(P + ".") and not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
  assert nparams == 87_332_960
  sd.pop(P + ".triplane_predictor_vit.block1.attn.sr.weight")
  with pytest.raises(StateDictError, match="attn.sr.weight"):
    load_state_dict(build_for_loading(), sd, prefix=P + ".", unused=UNUSED_KEYS)


def test_module_tree():
  model = nnx.eval_shape(lambda: Img2PlaneModel(rngs=nnx.Rngs(0)))
  assert nnx.find_duplicates(model) == []
  x = jax.ShapeDtypeStruct((2, 512, 512, 3), jnp.float32)
  assert nnx.eval_shape(lambda m, x: m(x), model, x).shape == (2, 3, 256, 256, 32)


def test_coordinate_channels(setup):
  case, _, img = setup
  x5 = np.asarray(coordinate_channels(jnp.asarray(img)))
  assert x5.shape == img.shape[:3] + (5,)
  h = img.shape[1]
  np.testing.assert_array_equal(x5[0, 10, 20, 3:], [10 / h, 20 / h])  # channel 3 = row/H, channel 4 = col/H
  name = f"{P}.low_reso_encoder/in0"
  if case.has(name):
    _check(case, nhwc_to_nchw(x5), name, 0.0)


def _unit_modules(case):
  """{module path: [input names], output name} for the unit records below the backbone."""
  mods = {}
  for n in case.names("unit:" + P):
    path, _, port = n[len("unit:"):].partition("/")
    mods.setdefault(path, {}).setdefault("in" if port.startswith("in") else "out", []).append(n)
  return mods


def _submodule(model, path):
  m = model
  for part in path[len(P) + 1:].split("."):
    m = m[int(part)] if part.isdigit() else getattr(m, part)
  return m


def test_unit_records_teacher_forced(setup):
  """Every `unit:` module of the backbone fed its recorded (whole) inputs: 1e-4 relative."""
  case, model, _ = setup
  units = _unit_modules(case)
  if not units:
    pytest.skip(f"{case.name}: no unit records for {P} (outputs-only profile); covered by b1-style cases")
  for path, ports in units.items():
    ins = [jnp.asarray(nchw_to_nhwc(case.record(n))) for n in sorted(ports["in"])]
    out = nnx.jit(lambda m, *a: m(*a))(_submodule(model, path), *ins)
    for n in ports["out"]:
      _check(case, nhwc_to_nchw(out), n, TOL_UNIT)


@pytest.fixture(scope="module")
def encoders(setup):
  """Low-res encoder features, its decoder output and the high-res encoder output, from the stored image."""
  case, model, img = setup

  @nnx.jit
  def run(m, img):
    x5 = coordinate_channels(img)
    feats = m.low_reso_encoder.encoder(x5)
    return feats, m.low_reso_encoder.decode(feats), m.high_reso_encoder(x5)

  return run(model, jnp.asarray(img))


def test_encoders_teacher_forced(setup, encoders):
  """The two encoders see the whole stored image (+ coordinates): teacher-forced, 1e-4 relative."""
  case, _, _ = setup
  feats, low, high = encoders
  for i, f in enumerate(feats):
    _check(case, nhwc_to_nchw(f), f"{P}.low_reso_encoder.encoder/out{i}", TOL_UNIT)
  _check(case, nhwc_to_nchw(low), f"{P}.low_reso_encoder.decoder/out0", TOL_UNIT)
  _check(case, nhwc_to_nchw(low), f"{P}.low_reso_encoder/out0", TOL_UNIT)
  _check(case, nhwc_to_nchw(high), f"{P}.high_reso_encoder/out0", TOL_UNIT)


def test_low_reso_vit_chained(setup, encoders):
  """The low-res ViT's recorded input is probed, so it is fed my decoder output: whole-forward bound 2e-4."""
  case, model, _ = setup
  out = nnx.jit(lambda m, x: m(x))(model.low_reso_vit, encoders[1])
  _check(case, nhwc_to_nchw(out), f"{P}.low_reso_vit/out0", TOL_CHAIN)


def test_unit_predictor_bf16(setup):
  """bf16 mode runs in bf16 and stays close to the fp32 reference on the unit window (loose bound)."""
  case, _, _ = setup
  names = case.names(f"unit:{P}.triplane_predictor_vit/")
  if not names:
    pytest.skip(f"{case.name}: no unit records of the tri-plane predictor")
  model = _load(case.dir, dtype=jnp.bfloat16)
  assert model.triplane_predictor_vit.first_conv.weight[...].dtype == jnp.float32  # params stay fp32
  ins = [jnp.asarray(nchw_to_nhwc(case.record(f"unit:{P}.triplane_predictor_vit/in{i}"))) for i in (0, 1)]
  out = nnx.jit(lambda m, a, b: m(a, b))(model.triplane_predictor_vit, *ins)
  assert out.dtype == jnp.bfloat16
  d, rel = case.compare(nhwc_to_nchw(np.asarray(out.astype(jnp.float32))), f"unit:{P}.triplane_predictor_vit/out0")
  print(f"bf16 unit predictor: max|Δ|={d:.3e} rel={rel:.3e}")
  assert rel < 3e-2


def test_batch_consistency_and_input_checks(setup):
  """B=2 on a small image equals two B=1 runs (fixture weights); bad shapes fail with a clear error."""
  _, model, img = setup
  x = jnp.asarray(np.concatenate([img[:1, :64, :64], img[:1, 64:128, 64:128]], axis=0))
  fwd = nnx.jit(lambda m, x: m(x))
  both = np.asarray(fwd(model, x))
  assert both.shape == (2, 3, 32, 32, 32)
  np.testing.assert_allclose(both[1], np.asarray(fwd(model, x[1:]))[0], rtol=0, atol=1e-4)
  with pytest.raises(ValueError, match="NHWC"):
    model(jnp.zeros((1, 3, 64, 64)))
  with pytest.raises(ValueError, match="multiples of 16"):
    model(jnp.zeros((1, 72, 64, 3)))


@pytest.mark.slow
def test_whole_i2p(setup):
  """The whole I2P from the stored image: every probed boundary at 2e-4 relative, planes also 1e-3 abs.
  Prints the compile and per-call CPU time (process time, all threads)."""
  case, model, img = setup
  fwd = nnx.jit(lambda m, x: m.features(x))
  x = jnp.asarray(img)
  t0 = time.process_time()
  fwd.lower(model, x).compile()
  t1 = time.process_time()
  feats = jax.block_until_ready(fwd(model, x))
  t2 = time.process_time()
  jax.block_until_ready(nnx.jit(lambda m, x: m(x))(model, x))
  t3 = time.process_time()
  jax.block_until_ready(nnx.jit(lambda m, x: m(x))(model, x))
  t4 = time.process_time()
  print(f"I2P B={img.shape[0]} fp32: lower+compile {t1 - t0:.1f} s CPU; features call {t2 - t1:.1f} s CPU; "
        f"__call__ compile+call {t3 - t2:.1f} s CPU, call {t4 - t3:.1f} s CPU")
  for key, v in feats.items():
    name = f"{P}/{key}" if key == "out0" else f"{P}.{key}"
    if not case.has(name):
      continue
    if key == "out0":
      _check(case, planes_to_torch(v), name, TOL_CHAIN, TOL_PLANES_ABS)
    else:
      _check(case, nhwc_to_nchw(v), name, TOL_CHAIN)
  assert case.has(f"{P}/out0")


@pytest.mark.slow
def test_whole_i2p_bf16(setup):
  """bf16 compute: planes vs the fp32 record. Reports max|Δ|; bound: 5e-2 of the planes' max |value|."""
  case, _, img = setup
  name = f"{P}/out0"
  model = _load(case.dir, dtype=jnp.bfloat16)
  fwd = nnx.jit(lambda m, x: m(x))
  t0 = time.process_time()
  planes = jax.block_until_ready(fwd(model, jnp.asarray(img)))
  t1 = time.process_time()
  jax.block_until_ready(fwd(model, jnp.asarray(img)))
  t2 = time.process_time()
  print(f"I2P B={img.shape[0]} bf16: compile+call {t1 - t0:.1f} s CPU, call {t2 - t1:.1f} s CPU")
  assert planes.dtype == jnp.float32
  d, rel = case.compare(planes_to_torch(planes), name)
  print(f"{case.name} bf16 planes vs fp32 record: max|Δ|={d:.3e} rel={rel:.3e}")
  assert rel < 5e-2
