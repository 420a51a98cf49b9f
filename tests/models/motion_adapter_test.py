"""Parity of the SECC motion adapter (`secc_img2plane_backbone`) against the r3p_model fixtures.

Tolerances (fixtures/r3p_model/README.md), relative to the record's max|value|:
  * whole branch run from the rebuilt 9-channel input: 2e-4 ("everything else, whole forward");
  * one module fed its own recorded inputs (teacher forcing, unit records): 1e-4.
"""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r3p.convert.seeded import load_seeded_state_dict
from r3p.convert.torch_to_nnx import StateDictError, load_state_dict, model_variables, to_torch_layout
from r3p.fixture_io import FixtureCase, nchw_to_nhwc, nhwc_to_nchw
from r3p.models.motion_adapter import (SegFormerSECC2PlaneBackbone, UNUSED_KEYS, from_state_dict, fuse_planes,
                                       make_secc_input)
from r3p.models.planes import planes_to_torch
from tests.conftest import FIXTURES

PREFIX = "secc_img2plane_backbone"
TOL_WHOLE = 2e-4
TOL_TEACHER = 1e-4


def _case_dirs():
  root = FIXTURES / "r3p_model"
  if not root.exists():
    return []
  out = []
  for p in sorted(root.glob("*/fixture.json")):
    if json.load(open(p)).get("kind") == "r3p_model":
      out.append(p.parent)
  return out


CASES = _case_dirs()


@functools.lru_cache(maxsize=2)
def _seeded(case_dir):
  return load_seeded_state_dict(str(case_dir))


def _abstract(**kw):
  return nnx.eval_shape(lambda: SegFormerSECC2PlaneBackbone(rngs=nnx.Rngs(0), **kw))


def synthetic_state_dict(seed=0, scale=0.05):
  """Random weights with the branch's torch keys/layouts (no fixtures needed); BN variances positive."""
  rng = np.random.default_rng(seed)
  sd = {}
  for k, v in model_variables(_abstract()).items():
    shape, dtype = v.get_value().shape, v.get_value().dtype
    val = rng.standard_normal(shape) * scale
    if k.endswith("running_var") or k.endswith("norm.weight") or k.endswith("bn.weight"):
      val = 1.0 + np.abs(val)
    sd[PREFIX + "." + k] = to_torch_layout(val.astype(dtype), getattr(v, "torch_layout", "none"))
  sd[PREFIX + ".prenet.resample_filter"] = np.ones((4, 4), np.float32) / 16
  return sd


def _load(case_dir, dtype=jnp.float32):
  return from_state_dict(_seeded(case_dir), prefix=PREFIX + ".", dtype=dtype)


def _secc_from_inputs(case):
  return make_secc_input(*[jnp.asarray(nchw_to_nhwc(case.inputs[k])) for k in ("cond_cano", "cond_src", "cond_tgt")])


def _mine_by_record(out, secc):
  """{record name without unit: prefix: my tensor in torch layout} for every boundary of the branch."""
  t = nhwc_to_nchw
  mine = {
      f"{PREFIX}/in0": t(secc), f"{PREFIX}.prenet/in0": t(secc), f"{PREFIX}.prenet/out0": t(out["prenet"]),
      f"{PREFIX}.mix_vit/in0": t(out["prenet"]), f"{PREFIX}.fuse_head/out0": t(out["fuse_head"]),
      f"{PREFIX}.to_plane_cnn/in0": t(out["fuse_head"]), f"{PREFIX}.to_plane_cnn/out0": t(out["to_plane_cnn"]),
      f"{PREFIX}/out0": np.asarray(planes_to_torch(out["planes"])),
  }
  for i, f in enumerate(out["mix_vit"]):
    mine[f"{PREFIX}.mix_vit/out{i}"] = t(f)
    mine[f"{PREFIX}.fuse_head/in0.{i}"] = t(f)
  return mine


@pytest.fixture(scope="module", params=CASES, ids=[p.name for p in CASES])
def branch(request):
  """(case, model, jitted intermediates on the rebuilt input, input): one compile per case."""
  case = FixtureCase(str(request.param))
  if not case.names(PREFIX):
    pytest.skip(f"{case.name}: no {PREFIX} records in this case (its modules.npz profile leaves them out)")
  m = _load(request.param)
  secc = _secc_from_inputs(case)
  out = jax.block_until_ready(nnx.jit(lambda mod, x: mod.intermediates(x))(m, secc))
  return case, m, out, secc


def test_state_dict_keys_all_accounted_for():
  if not CASES:
    pytest.skip("no r3p_model fixtures under ../shared")
  spec = json.load(open(CASES[0] / "weights_spec.json"))
  keys = {e["key"][len(PREFIX) + 1:] for e in spec["tensors"] if e["key"].startswith(PREFIX + ".")}
  m = _abstract()
  mine = set(model_variables(m))
  assert keys == mine | set(UNUSED_KEYS), (sorted(keys - mine - set(UNUSED_KEYS)), sorted(mine - keys))
  assert set(UNUSED_KEYS) <= keys
  # Parameter count of MODEL.md §4 (buffers excluded): 30 + 3,319,392 + 394,752 + 1,991,520.
  n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert n == 5_705_694


def test_loader_is_strict():
  sd = synthetic_state_dict()
  m = from_state_dict(sd, prefix=PREFIX + ".")
  np.testing.assert_array_equal(np.asarray(m.mix_vit.block1[0].attn.sr.weight[...]),
                                np.transpose(sd[PREFIX + ".mix_vit.block1.0.attn.sr.weight"], (2, 3, 1, 0)))
  with pytest.raises(StateDictError, match="unexpected key .*prenet.resample_filter"):
    load_state_dict(m, sd, prefix=PREFIX + ".")
  sd2 = dict(sd)
  del sd2[PREFIX + ".mix_vit.block2.1.attn.sr.weight"]
  with pytest.raises(StateDictError, match="missing key .*block2.1.attn.sr.weight"):
    from_state_dict(sd2, prefix=PREFIX + ".")
  sd2 = {**sd, PREFIX + ".to_plane_cnn.7.weight": np.zeros((32, 256, 3, 3), np.float32)}
  with pytest.raises(StateDictError, match="shape mismatch for .*to_plane_cnn.7.weight"):
    from_state_dict(sd2, prefix=PREFIX + ".")


def test_every_record_whole_branch(branch):
  """Whole branch from the rebuilt 9-channel input; every non-unit record of the branch, tolerance 2e-4."""
  case, _, out, secc = branch
  mine = _mine_by_record(out, secc)
  names = [n for n in case.names(PREFIX)]
  unknown = [n for n in names if n not in mine]
  assert not unknown, f"records with no counterpart: {unknown}"
  report = {}
  for n in names:
    d, rel = case.compare(mine[n], n)
    report[n] = (d, rel)
    assert rel <= TOL_WHOLE, f"{n}: max|Δ| {d:.3g} = {rel:.3g} of max|ref| > {TOL_WHOLE}"
  # The input is rebuilt exactly from inputs.npz, and the prenet has no upstream error.
  assert report[f"{PREFIX}/in0"][0] == 0.0
  assert f"{PREFIX}/out0" in report
  print({k: f"{v[0]:.3g} ({v[1]:.3g} rel)" for k, v in report.items()})


def test_output_layout(branch):
  case, m, out, secc = branch
  b = secc.shape[0]
  assert out["planes"].shape == (b, 3, 256, 256, 32) and out["planes"].dtype == jnp.float32
  assert out["to_plane_cnn"].shape == (b, 256, 256, 96)
  # r3p plane layout: plane p, row i, col j, channel k = official [p, k, i', j'] after the flips (H for planes 0
  # and 1, H and W for plane 2) of the 96-channel map's channel p·32 + k.
  raw = np.asarray(out["to_plane_cnn"][0])
  planes = np.asarray(out["planes"][0])
  np.testing.assert_array_equal(planes[0, 3, 5, 7], raw[255 - 3, 5, 7])
  np.testing.assert_array_equal(planes[1, 3, 5, 7], raw[255 - 3, 5, 32 + 7])
  np.testing.assert_array_equal(planes[2, 3, 5, 7], raw[255 - 3, 255 - 5, 64 + 7])


def test_teacher_forced_mix_vit_stages(branch):
  """Stage i+1 of MiT fed the recorded (whole) output of stage i; tolerance 1e-4 relative."""
  case, m, _, _ = branch
  done = 0
  for i in range(3):
    src, dst = f"{PREFIX}.mix_vit/out{i}", f"{PREFIX}.mix_vit/out{i + 1}"
    if not (case.has(src) and case.has(dst) and case.is_whole(src)):
      continue
    x = jnp.asarray(nchw_to_nhwc(case.record(src)))
    y = nnx.jit(lambda mod, v, s=i + 1: mod.mix_vit.stage(s, v))(m, x)
    d, rel = case.compare(nhwc_to_nchw(y), dst)
    print(f"{dst} teacher-forced from {src}: {d:.3g} ({rel:.3g} rel)")
    assert rel <= TOL_TEACHER, f"{dst} from {src}: {d:.3g} ({rel:.3g} rel) > {TOL_TEACHER}"
    done += 1
  if not done:
    pytest.skip(f"{case.name}: no whole MiT stage output to teacher-force from")


def test_teacher_forced_fuse_head(branch):
  """fuse_head fed its recorded inputs. c1 may be stored probed on its spatial axes only: the head is per-pixel
  at c1's resolution (linear_c1, the 1×1 linear_fuse and BN), so c1 scattered into a zero map gives the exact
  output at the probed pixels, which is all the (equally probed) output record holds."""
  case, m, _, _ = branch
  ins = [f"{PREFIX}.fuse_head/in0.{i}" for i in range(4)]
  outn = f"{PREFIX}.fuse_head/out0"
  if not all(case.has(n) for n in ins + [outn]) or not all(case.is_whole(n) for n in ins[1:]):
    pytest.skip(f"{case.name}: fuse_head inputs c2..c4 not stored whole")
  sel0 = case.index[ins[0]].get("sel", {})
  if set(sel0) - {"2", "3"} or case.index[outn].get("sel", {}) != sel0:
    pytest.skip(f"{case.name}: c1 / output probed in a way the scatter trick does not cover")
  c1_rec = case.record(ins[0])
  full_shape = case.index[ins[0]]["shape"]
  c1 = np.zeros(full_shape, np.float32)
  rows = case.probe_index(sel0["2"]) if "2" in sel0 else np.arange(full_shape[2])
  cols = case.probe_index(sel0["3"]) if "3" in sel0 else np.arange(full_shape[3])
  c1[:, :, rows[:, None], cols[None, :]] = c1_rec
  feats = [jnp.asarray(nchw_to_nhwc(c1))] + [jnp.asarray(nchw_to_nhwc(case.record(n))) for n in ins[1:]]
  y = nnx.jit(lambda mod, f: mod.fuse_head(f))(m, feats)
  d, rel = case.compare(nhwc_to_nchw(y), outn)
  print(f"{outn} teacher-forced: {d:.3g} ({rel:.3g} rel)")
  assert rel <= TOL_TEACHER, f"{outn}: {d:.3g} ({rel:.3g} rel) > {TOL_TEACHER}"


def test_teacher_forced_prenet(branch):
  """The prenet fed the recorded input (rebuilt whole from inputs.npz, equal to the record at its probes)."""
  case, m, _, secc = branch
  n_in, n_out = f"{PREFIX}.prenet/in0", f"{PREFIX}.prenet/out0"
  assert case.compare(nhwc_to_nchw(secc), n_in)[0] == 0.0
  y = nnx.jit(lambda mod, x: mod.prenet(x))(m, secc)
  d, rel = case.compare(nhwc_to_nchw(y), n_out)
  assert rel <= TOL_TEACHER, f"{n_out}: {d:.3g} ({rel:.3g} rel)"


def test_unit_records(branch):
  """`unit:` records of this branch (windowed inputs stored whole), if the case has any; tolerance 1e-4."""
  case, m, _, _ = branch
  units = case.names("unit:" + PREFIX)
  if not units:
    pytest.skip(f"{case.name}: no unit records for {PREFIX} (the fixture defines none for this branch)")
  mods = {n.split("/")[0][len("unit:"):] for n in units}
  for mod_path in sorted(mods):
    sub = m
    for part in mod_path[len(PREFIX):].strip(".").split("."):
      if part:
        sub = sub[int(part)] if part.isdigit() else getattr(sub, part)
    in_names = sorted(n for n in units if n.startswith(f"unit:{mod_path}/in"))
    out_names = sorted(n for n in units if n.startswith(f"unit:{mod_path}/out"))
    xs = [jnp.asarray(nchw_to_nhwc(case.record(n))) for n in in_names]
    arg = xs if any("." in n.split("/")[1] for n in in_names) else xs[0]
    y = sub(arg) if not isinstance(sub, nnx.List) else _run_seq(sub, arg)
    ys = y if isinstance(y, (list, tuple)) else [y]
    for n, yi in zip(out_names, ys):
      d, rel = case.compare(nhwc_to_nchw(yi), n)
      assert rel <= TOL_TEACHER, f"{n}: {d:.3g} ({rel:.3g} rel)"


def _run_seq(seq, x):
  for layer in seq:
    x = layer(x)
  return x


def test_prenet_split_is_rounding_level_only(branch):
  """Documented precompute option: the prenet is linear, so cano/src could be summed once per video; the split sum
  only differs from the reference's single accumulation by float32 rounding."""
  case, m, out, secc = branch
  w = m.prenet.weight[...] * m.prenet.weight_gain
  b = m.prenet.bias[...]
  hi = jax.lax.Precision.HIGHEST
  static = jnp.einsum("bhwc,co->bhwo", secc[..., :6], w[0, 0, :6], precision=hi)
  per_frame = jnp.einsum("bhwc,co->bhwo", secc[..., 6:], w[0, 0, 6:], precision=hi)
  split = static + per_frame + b
  d = float(jnp.abs(split - out["prenet"]).max())
  print(f"prenet split vs fused max|Δ| = {d:.3g}")
  assert d < 1e-5


def test_fuse_planes_and_errors():
  a = jnp.ones((1, 3, 4, 4, 32))
  b = jnp.full((1, 3, 4, 4, 32), 2.0)
  np.testing.assert_array_equal(np.asarray(fuse_planes(a, b)), 3.0)
  with pytest.raises(NotImplementedError, match="fusion mode 'concat'"):
    fuse_planes(a, b, mode="concat")
  with pytest.raises(ValueError, match="plane shapes differ"):
    fuse_planes(a, b[:, :, :2])
  m = _abstract()
  with pytest.raises(ValueError, match=r"secc must be NHWC \[B,H,W,9\]"):
    m(jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(ValueError, match="multiples of 32"):
    m(jnp.zeros((1, 48, 64, 9)))
  with pytest.raises(ValueError, match="cond_cano/src/tgt"):
    make_secc_input(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 4, 3)))


def test_small_input_shapes_and_batch_independence():
  """Synthetic weights on a small input: shapes follow the strides; batch items are independent (no
  cross-batch mixing anywhere, e.g. in the eval-mode BN); __call__ == intermediates()["planes"]."""
  m = from_state_dict(synthetic_state_dict(1), prefix=PREFIX + ".")
  x = jax.random.uniform(jax.random.key(0), (2, 64, 96, 9), minval=-1, maxval=1)
  o, p1 = nnx.jit(lambda mod, v: (mod.intermediates(v), mod(v[1:])))(m, x)
  assert [f.shape for f in o["mix_vit"]] == [(2, 16, 24, 32), (2, 8, 12, 64), (2, 4, 6, 160), (2, 2, 3, 256)]
  assert o["fuse_head"].shape == (2, 16, 24, 256)
  assert o["planes"].shape == (2, 3, 32, 48, 32)
  assert np.isfinite(np.asarray(o["planes"])).all() and float(jnp.abs(o["planes"]).max()) > 0
  np.testing.assert_allclose(np.asarray(p1), np.asarray(o["planes"][1:]), atol=1e-5)


def test_random_init_dtypes():
  """The constructor's random init, traced abstractly (cheap): params take param_dtype, BN statistics stay fp32."""
  m = _abstract(param_dtype=jnp.bfloat16)
  for k, v in model_variables(m).items():
    want = jnp.bfloat16 if isinstance(v, nnx.Param) else (jnp.int32 if k.endswith("tracked") else jnp.float32)
    assert v.get_value().dtype == want, k


@pytest.mark.slow
def test_bf16_planes_track_fp32(branch):
  """bf16 compute (fp32 params) on the fixture input: planes within 3e-2 of the record's max|value| (measured
  ~1e-2 on b1_frontal: bf16 rounding through ~20 layers); the fp32 path is the parity path."""
  case, _, out, secc = branch
  m16 = _load(case.dir, dtype=jnp.bfloat16)
  p16 = nnx.jit(lambda mod, x: mod(x))(m16, secc)
  assert p16.dtype == jnp.bfloat16
  mine = np.asarray(planes_to_torch(p16.astype(jnp.float32)))
  d, rel = case.compare(mine, f"{PREFIX}/out0")
  d32 = float(jnp.abs(p16.astype(jnp.float32) - out["planes"]).max())
  print(f"bf16 vs record: {d:.3g} ({rel:.3g} rel); bf16 vs fp32 planes (whole tensor): {d32:.3g}")
  assert rel <= 3e-2
