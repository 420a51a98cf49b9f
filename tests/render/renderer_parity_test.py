"""Renderer parity against the official-network fixtures (r3p_model cases, seeded weights, recorded draws).

Per case:
  * chain-free records (ray sampler, box limits, stratified depths) from the recorded camera and jitter;
  * teacher-forced components (decoder#k, ray_marcher#k, sample_pdf, sample_importance, unify_samples) fed
    their own recorded (probed) inputs;
  * when the case stores the full `plane` output: the whole unfused chain (`render_trace`) against every
    renderer-family record, and the fused `render` (XLA) against outputs.npz.
Tolerances (fixture README): renderer-family records max|Δ| ≤ 1e-3 · max|ref| over the whole forward;
teacher-forced components ≤ 1e-4 · max|ref|; outputs image_raw / image_feature ≤ 2e-4, image_depth /
weights_img ≤ 1e-4 absolute. Every tensor record of the renderer family must be compared or listed in SKIPPED.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import FIXTURES

from r3p.convert.seeded import load_seeded_state_dict
from r3p.convert.torch_to_nnx import load_state_dict
from r3p.fixture_io import FixtureCase
from r3p.kernels.raymarch import base
from r3p.models.decoder import OSGDecoder
from r3p.models.planes import planes_from_torch
from r3p.render import bounds, cameras, raymarch, renderer, sampling

FAMILY = ("ray_sampler/", "renderer/", "renderer.", "decoder#")
SKIPPED = {"renderer/in0": "the input planes (not computed by the renderer)"}
CHAIN_TOL = 1e-3
TEACHER_TOL = 1e-4
OUTPUT_TOL = {"image_raw": 2e-4, "image_feature": 2e-4, "image_depth": 1e-4, "weights_img": 1e-4}
RESULTS = {}
_WEIGHTS = {}  # weights checksum -> decoder state dict (cases with the same weight seed share weights)

# Jitted once: eager dispatch would compile every small op separately.
_composite = jax.jit(base.composite)
_sample_pdf = jax.jit(sampling.sample_pdf)
_importance = jax.jit(sampling.importance)
_unify = jax.jit(sampling.unify)
_decode = nnx.jit(lambda dec, feat: dec(feat.mean(axis=1)))


@jax.jit
def _chain_free(cam, jitter):
  c2w, k = cameras.split_camera(cam)
  res = int(round(np.sqrt(jitter.shape[1])))
  o, d = cameras.ray_sampler(c2w, k, res)
  t0, t1 = bounds.ray_limits_box(o, d, 1.0)
  start, end, _ = bounds.ray_start_end(o, d, 1.0)
  z = sampling.stratified(start, end, jitter.shape[-1], jitter)
  return {"ray_sampler/in0": c2w, "ray_sampler/in1": k, "ray_sampler/out0": o, "ray_sampler/out1": d,
          "renderer.get_ray_limits_box/out0": t0, "renderer.get_ray_limits_box/out1": t1,
          "renderer.sample_stratified/out0": z[..., None]}


def _cases():
  root = FIXTURES / "r3p_model"
  if not root.exists():
    return [pytest.param(None, marks=pytest.mark.skip(reason=f"fixtures missing: {root}"))]
  out = []
  for d in sorted(root.iterdir()):
    f = d / "fixture.json"
    if f.exists() and json.loads(f.read_text()).get("kind") == "r3p_model":
      out.append(pytest.param(d, id=d.name))
  return out


def _tensor_records(case):
  return [n for n, v in case.index.items() if n.startswith(FAMILY) and v.get("shape") is not None]


@pytest.fixture(scope="module", params=_cases())
def env(request):
  case = FixtureCase(str(request.param))
  key = case.case.get("weights", {}).get("sha256") or case.dir
  if key not in _WEIGHTS:
    _WEIGHTS[key] = {k: v for k, v in load_seeded_state_dict(case.dir).items() if k.startswith("decoder.")}
  sd = _WEIGHTS[key]
  dec = OSGDecoder(rngs=nnx.Rngs(0))
  load_state_dict(dec, sd, prefix="decoder.")
  return case, dec


def _rel(mine, ref):
  mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
  assert mine.shape == ref.shape, (mine.shape, ref.shape)
  d = float(np.abs(mine - ref).max())
  return d, d / max(float(np.abs(ref).max()), 1e-30)


def _report(case, name, d, r, tol):
  RESULTS.setdefault(case.name, {})[name] = (d, r)
  print(f"{case.name:12s} {name:45s} max|Δ|={d:.3e} rel={r:.3e} (tol {tol:g} rel)")
  return r <= tol


def _chain_records(tr, b, n):
  """My trace in the official record names and layouts."""
  def per_point(x):  # [B,N,S,...] -> [B,N·S,...]
    return x.reshape((b, -1) + x.shape[3:])
  e = lambda x: x[..., None]
  s_c, s_f = tr["depths_coarse"].shape[-1], tr["depths_fine"].shape[-1]
  rec = {
      "ray_sampler/in0": tr["cam2world"], "ray_sampler/in1": tr["intrinsics"],
      "ray_sampler/out0": tr["origins"], "ray_sampler/out1": tr["directions"],
      "renderer/in2": tr["origins"], "renderer/in3": tr["directions"],
      "renderer.get_ray_limits_box/in0": tr["origins"], "renderer.get_ray_limits_box/in1": tr["directions"],
      "renderer.get_ray_limits_box/out0": tr["t_min"], "renderer.get_ray_limits_box/out1": tr["t_max"],
      "renderer.sample_stratified/in0": tr["origins"],
      "renderer.sample_stratified/out0": e(tr["depths_coarse"]),
      "renderer.sample_pdf/in0": tr["pdf_bins"], "renderer.sample_pdf/in1": tr["pdf_weights"],
      "renderer.sample_pdf/out0": tr["depths_fine"].reshape(b * n, s_f),
      "renderer.sample_importance/in0": e(tr["depths_coarse"]),
      "renderer.sample_importance/in1": e(tr["weights_coarse"]),
      "renderer.sample_importance/out0": e(tr["depths_fine"]),
      "renderer.unify_samples/in0": e(tr["depths_coarse"]), "renderer.unify_samples/in1": tr["colors_coarse"],
      "renderer.unify_samples/in2": e(tr["densities_coarse"]), "renderer.unify_samples/in3": e(tr["depths_fine"]),
      "renderer.unify_samples/in4": tr["colors_fine"], "renderer.unify_samples/in5": e(tr["densities_fine"]),
      "renderer.unify_samples/out0": e(tr["depths_all"]), "renderer.unify_samples/out1": tr["colors_all"],
      "renderer.unify_samples/out2": e(tr["densities_all"]),
      "renderer/out0": tr["rgb"], "renderer/out1": e(tr["depth"]), "renderer/out2": e(tr["weights_sum"]),
      "renderer/out3": tr["is_valid"],
  }
  rec["renderer.sample_stratified/in1"], rec["renderer.sample_stratified/in2"] = None, None  # start/end: aliases
  for k, (sfx, s) in enumerate((("coarse", s_c), ("all", s_c + s_f))):
    pt = "coarse" if k == 0 else "fine"
    rec[f"decoder#{k}/in0"] = tr[f"features_{pt}"]
    # The official decoder's second argument is the sample coordinates (not the directions; ignored by it).
    rec[f"decoder#{k}/in1"] = tr[f"points_{pt}"]
    rec[f"decoder#{k}/out.rgb"] = per_point(tr[f"colors_{pt}"])
    rec[f"decoder#{k}/out.sigma"] = e(per_point(tr[f"densities_{pt}"]))
    rec[f"renderer.ray_marcher#{k}/in0"] = tr[f"colors_{sfx}"]
    rec[f"renderer.ray_marcher#{k}/in1"] = e(tr[f"densities_{sfx}"])
    rec[f"renderer.ray_marcher#{k}/in2"] = e(tr[f"depths_{sfx}"])
    rec[f"renderer.ray_marcher#{k}/out0"] = tr["rgb_coarse" if k == 0 else "rgb"]
    rec[f"renderer.ray_marcher#{k}/out1"] = e(tr["depth_coarse" if k == 0 else "depth"])
    rec[f"renderer.ray_marcher#{k}/out2"] = e(tr["weights_coarse" if k == 0 else "weights"])
  return rec


def test_chain_free_records(env):
  """Rays, box limits and stratified depths from the camera and the recorded jitter (every case)."""
  case, _ = env
  res = int(case.index["ray_sampler/in2"]["value"])
  assert float(case.index["renderer.get_ray_limits_box/in.box_side_length"]["value"]) == 1.0
  jitter = jnp.asarray(case.rng["coarse_jitter"])[..., 0]
  assert jitter.shape[1] == res * res
  mine = _chain_free(jnp.asarray(case.inputs["camera"]), jitter)
  ok = True
  for name, v in mine.items():
    if case.has(name):
      ok &= _report(case, name, *case.compare(np.asarray(v), name), TEACHER_TOL)
  assert ok


def test_teacher_forced_components(env):
  """Each renderer component on its own recorded (probed) inputs."""
  case, dec = env
  ok = True
  for k in (0, 1):
    name = f"decoder#{k}"
    if not case.has(f"{name}/in0"):
      continue
    sigma, rgb = _decode(dec, jnp.asarray(case.record(f"{name}/in0")))
    ok &= _report(case, f"{name}/out.sigma [tf]", *_rel(sigma, case.record(f"{name}/out.sigma")), TEACHER_TOL)
    ok &= _report(case, f"{name}/out.rgb [tf]", *_rel(rgb, case.record(f"{name}/out.rgb")), TEACHER_TOL)
  rays, rays_small = case.probe_index("rays"), case.probe_index("rays_small")
  both = np.isin(rays_small, rays)
  pos_in_rays = np.searchsorted(rays, rays_small[both])
  for k in (0, 1):
    name = f"renderer.ray_marcher#{k}"
    if not case.has(f"{name}/in1"):
      continue
    dens = jnp.asarray(case.record(f"{name}/in1"))[..., 0]
    z = jnp.asarray(case.record(f"{name}/in2"))[..., 0]
    cols = jnp.asarray(case.record(f"{name}/in0"))
    _, depth, w = _composite(jnp.zeros(dens.shape + (1,)), dens, z)
    st = case.index[f"{name}/in2"]["stats"]  # the global clamp uses min/max over the whole depth tensor
    depth = jnp.clip(depth, st["min"], st["max"])
    ok &= _report(case, f"{name}/out2 [tf]", *_rel(w[..., None], case.record(f"{name}/out2")), TEACHER_TOL)
    ok &= _report(case, f"{name}/out1 [tf]",
                  *_rel(depth[..., None], case.record(f"{name}/out1")[:, rays]), TEACHER_TOL)
    rgb, _, _ = _composite(cols[:, both], dens[:, pos_in_rays], z[:, pos_in_rays])
    ok &= _report(case, f"{name}/out0 [tf]", *_rel(rgb, case.record(f"{name}/out0")[:, pos_in_rays]),
                  TEACHER_TOL)
  if case.has("renderer.sample_pdf/in0"):
    fr = case.probe_index("flat_rays")
    u = jnp.asarray(case.rng["importance_u"])[fr]
    fine = _sample_pdf(jnp.asarray(case.record("renderer.sample_pdf/in0")),
                               jnp.asarray(case.record("renderer.sample_pdf/in1")), u)
    ok &= _report(case, "renderer.sample_pdf/out0 [tf]", *_rel(fine, case.record("renderer.sample_pdf/out0")),
                  TEACHER_TOL)
  if case.has("renderer.sample_importance/out0"):
    zc = jnp.asarray(case.record("renderer.sample_importance/in0"))[..., 0]
    wc = jnp.asarray(case.record("renderer.sample_importance/in1"))[..., 0]
    b, nr = zc.shape[:2]
    n_all = case.index["renderer.sample_importance/in0"]["shape"][1]
    rows = (np.arange(b)[:, None] * n_all + rays[None]).reshape(-1)
    fine = _importance(zc, wc, jnp.asarray(case.rng["importance_u"])[rows])
    ok &= _report(case, "renderer.sample_importance/out0 [tf]",
                  *_rel(fine[..., None], case.record("renderer.sample_importance/out0")), TEACHER_TOL)
  if case.has("renderer.unify_samples/out0"):
    r = lambda i: jnp.asarray(case.record(f"renderer.unify_samples/in{i}"))
    z, s = _unify(r(0)[..., 0], r(3)[..., 0], (r(2)[..., 0], r(5)[..., 0]))
    ok &= _report(case, "renderer.unify_samples/out0 [tf]", *_rel(z[..., None], case.record(
        "renderer.unify_samples/out0")), TEACHER_TOL)
    ok &= _report(case, "renderer.unify_samples/out2 [tf]", *_rel(s[..., None], case.record(
        "renderer.unify_samples/out2")), TEACHER_TOL)
    zs = lambda i: r(i)[:, np.isin(rays, rays_small)][..., 0]
    if both.all():
      _, c = _unify(zs(0), zs(3), (r(1), r(4)))
      ok &= _report(case, "renderer.unify_samples/out1 [tf]", *_rel(c, case.record(
          "renderer.unify_samples/out1")), TEACHER_TOL)
  assert ok


@pytest.fixture(scope="module")
def planes_env(env):
  case, dec = env
  if "plane" not in case.outputs.files:
    pytest.skip(f"{case.name}: no `plane` output stored (components are covered by the teacher-forced test)")
  planes = planes_from_torch(jnp.asarray(case.outputs["plane"]))
  cam = jnp.asarray(case.inputs["camera"])
  cj = jnp.asarray(case.rng["coarse_jitter"])[..., 0]
  iu = jnp.asarray(case.rng["importance_u"])
  return case, dec, planes, cam, cj, iu


def test_full_chain_records(planes_env):
  """The unfused chain from the fixture's planes against every renderer-family record of the case."""
  case, dec, planes, cam, cj, iu = planes_env
  tr = jax.jit(lambda p, c, a, u: renderer.render_trace(p, dec, c, coarse_jitter=a, importance_u=u))(
      planes, cam, cj, iu)
  tr = jax.tree.map(np.asarray, tr)
  b, n = tr["origins"].shape[:2]
  rec = _chain_records(tr, b, n)
  ok, unhandled = True, []
  for name in _tensor_records(case):
    if name in SKIPPED:
      continue
    if name not in rec:
      unhandled.append(name)
      continue
    if rec[name] is None:  # alias of a record compared under its own name
      assert case.index[name].get("alias"), name
      continue
    mine = rec[name]
    if mine.dtype == bool:
      ok &= _report(case, name, float(np.sum(mine != case.record(name))), 0.0, 0.0)
      continue
    ok &= _report(case, name, *case.compare(mine, name), CHAIN_TOL)
  assert not unhandled, f"renderer-family records not compared: {unhandled}"
  assert ok


def _outputs_check(case, out):
  img = lambda x: np.moveaxis(np.asarray(x), -1, 1)  # NHWC -> NCHW
  feat = out["feature_image"]
  mine = {"image_raw": np.clip(img(feat[..., :3]), -1, 1), "image_feature": img(feat[..., 3:]),
          "image_depth": img(out["depth_image"]), "weights_img": img(out["weights_image"])}
  ok = True
  for k, tol in OUTPUT_TOL.items():
    d = float(np.abs(mine[k] - case.outputs[k]).max())
    RESULTS.setdefault(case.name, {})[k] = (d, None)
    print(f"{case.name:12s} output {k:38s} max|Δ|={d:.3e} (tol {tol:g} abs)")
    ok &= d <= tol
  return ok


def test_render_outputs_xla(planes_env):
  """The fused `render` (XLA implementation) against outputs.npz."""
  case, dec, planes, cam, cj, iu = planes_env
  f = jax.jit(lambda p, c, a, u: renderer.render(p, dec, c, coarse_jitter=a, importance_u=u,
                                                 implementation="xla"))
  assert _outputs_check(case, f(planes, cam, cj, iu))


def test_render_outputs_pallas_interpret(planes_env):
  """The fused `render` with the Pallas kernel in interpret mode against outputs.npz (~10 s on CPU)."""
  case, dec, planes, cam, cj, iu = planes_env
  f = jax.jit(lambda p, c, a, u: renderer.render(p, dec, c, coarse_jitter=a, importance_u=u,
                                                 implementation="pallas"))
  assert _outputs_check(case, f(planes, cam, cj, iu))
