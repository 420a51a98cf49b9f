"""StyleGAN2 layers: small float64 NumPy references (upfirdn2d, modulated conv incl. the transposed up path),
fused vs non-fused modulation, and the SR blocks against the fixture records with teacher forcing.

Fixture tolerance (shared/fixtures/r3p_model/README.md): a module fed its own recorded inputs, outside the
renderer, must match within 1e-4 × the record's max |value|.
"""
import numpy as np
import pytest

import jax.numpy as jnp
from flax import nnx

from tests.conftest import shared_path

from r3p.nn import stylegan2 as sg

REL_TOL = 1e-4


# ------------------------------------------------------------------------------------------- NumPy references
def _np_upfirdn2d(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
  """NCHW float64, straight from the documented algorithm: zero-insert, pad, true convolution, decimate."""
  b, c, h, w = x.shape
  z = np.zeros((b, c, h * up, w * up))
  z[:, :, ::up, ::up] = x
  px0, px1, py0, py1 = pad
  z = np.pad(z, ((0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
  z = z[:, :, max(-py0, 0):z.shape[2] - max(-py1, 0), max(-px0, 0):z.shape[3] - max(-px1, 0)]  # negative = crop
  f = np.asarray(f, np.float64)[::-1, ::-1] * gain
  fh, fw = f.shape
  oh, ow = z.shape[2] - fh + 1, z.shape[3] - fw + 1
  out = np.zeros((b, c, oh, ow))
  for i in range(fh):
    for j in range(fw):
      out += z[:, :, i:i + oh, j:j + ow] * f[i, j]
  return out[:, :, ::down, ::down]


def _np_conv2d(x, w, pad):
  """torch conv2d (correlation), NCHW x, OIHW w, float64."""
  o, i, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  oh, ow = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
  out = np.zeros((x.shape[0], o, oh, ow))
  for a in range(kh):
    for b in range(kw):
      out += np.einsum("nihw,oi->nohw", xp[:, :, a:a + oh, b:b + ow], w[:, :, a, b])
  return out


def _np_conv_transpose2d(x, w_io, stride):
  """torch conv_transpose2d, padding 0: out[o, s·y + a, s·x + b] += x[i, y, x] · w_io[i, o, a, b]."""
  n, i, h, wd = x.shape
  _, o, kh, kw = w_io.shape
  out = np.zeros((n, o, (h - 1) * stride + kh, (wd - 1) * stride + kw))
  for a in range(kh):
    for b in range(kw):
      out[:, :, a:a + stride * h:stride, b:b + stride * wd:stride] += np.einsum("nihw,io->nohw", x, w_io[:, :, a, b])
  return out


def _np_modconv(x, weight_oikk, styles, demodulate, up, f):
  """The official modulated_conv2d (fused path) for every sample, float64 NCHW."""
  outs = []
  for n in range(x.shape[0]):
    w = weight_oikk * styles[n][None, :, None, None]
    if demodulate:
      w = w / np.sqrt((w ** 2).sum(axis=(1, 2, 3), keepdims=True) + 1e-8)
    xn = x[n:n + 1]
    if up == 1:
      outs.append(_np_conv2d(xn, w, w.shape[-1] // 2))
    else:
      y = _np_conv_transpose2d(xn, np.transpose(w, (1, 0, 2, 3)), 2)
      outs.append(_np_upfirdn2d(y, f, pad=(1, 1, 1, 1), gain=4))
  return np.concatenate(outs)


def nhwc(a):
  return jnp.asarray(np.moveaxis(np.asarray(a, np.float32), 1, -1))


def nchw(a):
  return np.moveaxis(np.asarray(a, np.float64), -1, 1)


# ------------------------------------------------------------------------------------------- unit tests
@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1, 2, 1)), (1, 2, (1, 1, 1, 1)), (1, 1, (1, 1, 1, 1)),
                                         (2, 1, (-1, 0, 0, 2))])
def test_upfirdn2d_matches_reference(up, down, pad):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 9, 7))
  f = sg.setup_filter() if pad[0] >= 0 else rng.normal(size=(4, 4))  # a non-symmetric filter tests the flip
  mine = nchw(sg.upfirdn2d(nhwc(x), jnp.asarray(f, jnp.float32), up=up, down=down, padding=pad, gain=up * up))
  np.testing.assert_allclose(mine, _np_upfirdn2d(x, f, up, down, pad, up * up), atol=1e-5)


def test_upsample_downsample_shapes_and_dc_gain():
  x = jnp.ones((1, 8, 8, 2))
  f = jnp.asarray(sg.setup_filter())
  up = sg.upsample2d(x, f)
  assert up.shape == (1, 16, 16, 2)
  np.testing.assert_allclose(np.asarray(up)[:, 2:-2, 2:-2], 1.0, atol=1e-6)  # unit DC gain away from borders
  dn = sg.downsample2d(x, f)
  assert dn.shape == (1, 4, 4, 2)
  np.testing.assert_allclose(np.asarray(dn)[:, 1:-1, 1:-1], 1.0, atol=1e-6)


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv2d_matches_reference(up, demodulate, fused):
  rng = np.random.default_rng(1)
  b, i, o, h, k = 2, 5, 4, 6, (3 if (up == 2 or demodulate) else 1)
  x = rng.normal(size=(b, i, h, h))
  w = rng.normal(size=(o, i, k, k))
  s = rng.normal(size=(b, i))
  f = sg.setup_filter()
  mine = sg.modulated_conv2d(nhwc(x), jnp.asarray(np.transpose(w, (2, 3, 1, 0)), jnp.float32),
                             jnp.asarray(s, jnp.float32), demodulate=demodulate, up=up,
                             resample_filter=jnp.asarray(f), fused_modconv=fused)
  ref = _np_modconv(x, w, s, demodulate, up, f)
  assert mine.shape == (b, h * up, h * up, o)
  np.testing.assert_allclose(nchw(mine), ref, atol=1e-4 * np.abs(ref).max())


def test_modulated_conv2d_bad_shapes_raise():
  with pytest.raises(ValueError, match="do not match"):
    sg.modulated_conv2d(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 2, 5)), jnp.zeros((1, 3)))


def test_buffers_are_state_dict_keys():
  from r3p.convert.torch_to_nnx import model_variables
  blk = nnx.eval_shape(lambda: sg.SynthesisBlock(4, 8, w_dim=16, resolution=8, rngs=nnx.Rngs(0)))
  keys = set(model_variables(blk))
  for k in ("resample_filter", "conv0.weight", "conv0.affine.weight", "conv0.affine.bias", "conv0.bias",
            "conv0.resample_filter", "conv0.noise_const", "conv0.noise_strength", "conv1.weight", "torgb.weight",
            "torgb.bias", "torgb.affine.weight"):
    assert k in keys, k
  assert len(keys) == 19  # as many tensors as the official block (MODEL.md §4)


# ------------------------------------------------------------------------------------------- fixture records
@pytest.fixture(scope="module")
def b1():
  from r3p.convert.seeded import load_seeded_state_dict
  from r3p.fixture_io import FixtureCase
  d = shared_path("fixtures", "r3p_model", "b1_frontal")
  return FixtureCase(str(d)), load_seeded_state_dict(str(d))


def _block(sd, prefix, cin, cout, res, use_up):
  from r3p.convert.torch_to_nnx import load_state_dict
  # Abstract construction (no random init), then every variable comes from the state dict.
  blk = nnx.eval_shape(lambda: sg.SynthesisBlock(cin, cout, w_dim=512, resolution=res, use_up=use_up,
                                                 rngs=nnx.Rngs(0)))
  for _, var in nnx.to_flat_state(nnx.state(blk)):
    var.set_value(jnp.zeros(var.get_value().shape, var.get_value().dtype))
  load_state_dict(blk, sd, prefix=prefix)
  return blk


def _check(case, mine_nhwc, name, report):
  d, rel = case.compare(nchw(mine_nhwc), name)
  report.append((name, d, rel))
  assert rel <= REL_TOL, (name, d, rel)


def test_block0_records(b1):
  """block0 from its recorded inputs (x = cat(image_raw, image_feature), checked against the probed record)."""
  case, sd = b1
  if not case.has("superresolution.block0.conv0/out0"):
    pytest.skip("case without block0 records")
  x = np.concatenate([case.outputs["image_raw"], case.outputs["image_feature"]], 1)
  assert case.compare(x, "superresolution.block0/in0")[0] == 0.0
  blk = _block(sd, "superresolution.block0.", 32, 256, 256, True)
  ws = jnp.asarray(case.record("superresolution.block0/in2"))

  @nnx.jit
  def run(blk, x, img, ws):
    y0 = blk.conv0(x, ws[:, 0])
    y1 = blk.conv1(y0, ws[:, 1])
    rgb = blk.torgb(y1, ws[:, 2])
    xo, img_o = blk(x, img, ws)
    return y0, y1, rgb, xo, img_o

  y0, y1, rgb, xo, img_o = run(blk, nhwc(x), nhwc(case.record("superresolution.block0/in1")), ws)
  rep = []
  for name, v in [("superresolution.block0.conv0/out0", y0), ("superresolution.block0.conv1/out0", y1),
                  ("superresolution.block0.torgb/out0", rgb), ("superresolution.block0/out0", xo),
                  ("superresolution.block0/out1", img_o)]:
    _check(case, v, name, rep)
  print("\n".join(f"{n}: max|d|={d:.3g} rel={r:.3g} (tol {REL_TOL})" for n, d, r in rep))


@pytest.mark.parametrize("module,cin,cout,res,use_up", [("head_torso_block", 256, 256, 256, False),
                                                        ("block1", 256, 128, 512, True)])
def test_block_unit_records(b1, module, cin, cout, res, use_up):
  """The `unit:` records: the block rerun on its recorded inputs with everything outside a window zeroed."""
  case, sd = b1
  pre = f"unit:superresolution.{module}"
  if not case.has(pre + "/out0"):
    pytest.skip(f"case without {pre} records")
  blk = _block(sd, f"superresolution.{module}.", cin, cout, res, use_up)
  x, img, ws = (case.record(f"{pre}/in{i}") for i in range(3))
  xo, img_o = nnx.jit(lambda b, x, i, w: b(x, i, w))(blk, nhwc(x), nhwc(img), jnp.asarray(ws))
  rep = []
  _check(case, xo, pre + "/out0", rep)
  _check(case, img_o, pre + "/out1", rep)
  print("\n".join(f"{n}: max|d|={d:.3g} rel={r:.3g} (tol {REL_TOL})" for n, d, r in rep))
