"""r3p.nn.segformer against float64 numpy references written from the reference semantics (MODEL.md §1.2, §3.4).

Weights are given as torch-named, torch-layout dicts and loaded with the generic loader, so the tests also pin
the state_dict names. Tolerance: 1e-5 absolute on O(1) values (fp32 vs float64 rounding only); the exact-vs-tanh
GELU and the eps choices are far above it (checked explicitly below).
"""
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r3p.convert.torch_to_nnx import load_state_dict, model_variables
from r3p.nn import segformer as sf

TOL = 1e-5
_erf = np.vectorize(math.erf)


def _rand_sd(module, seed, scale=0.3):
  """Random torch-layout weights for every variable of `module` (norm scales near 1, variances positive)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for k, v in model_variables(module).items():
    shp = v[...].shape
    val = rng.standard_normal(shp) * scale
    if k.endswith("running_var"):
      val = 0.5 + np.abs(val)
    elif k.endswith("norm.weight") or k.endswith("norm1.weight") or k.endswith("norm2.weight") or k.endswith(
        "bn.weight"):
      val = 1.0 + val
    if k.endswith("num_batches_tracked"):
      sd[k] = np.zeros((), np.int64)
      continue
    layout = getattr(v, "torch_layout", "none")
    if layout == "conv":  # HWIO shape -> torch OIHW
      val = np.transpose(val, (3, 2, 0, 1))
    elif layout == "linear":
      val = val.T
    sd[k] = val.astype(np.float32)
  load_state_dict(module, sd)
  return {k: v.astype(np.float64) for k, v in sd.items()}


def _abstract_zeros(ctor):
  """Build a module without running its random init (traced abstractly), variables set to numpy zeros; the tests
  then load their own weights. Eager random init costs one small compile per op, i.e. tens of seconds here."""
  m = nnx.eval_shape(ctor)
  for v in model_variables(m).values():
    a = v.get_value()
    v.set_value(np.zeros(a.shape, a.dtype))
  return m


def _ln(x, w, b, eps):
  m = x.mean(-1, keepdims=True)
  v = ((x - m) ** 2).mean(-1, keepdims=True)
  return (x - m) / np.sqrt(v + eps) * w + b


def _lin(x, sd, p):
  return x @ sd[p + ".weight"].T + sd[p + ".bias"]


def _conv_nchw(x, w, b, stride, pad, groups=1):
  n, c, h, wd = x.shape
  o, ig, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
  y = np.zeros((n, o, oh, ow))
  og = o // groups
  for oc in range(o):
    g = oc // og
    for i in range(kh):
      for j in range(kw):
        patch = xp[:, g * ig:(g + 1) * ig, i: i + stride * oh: stride, j: j + stride * ow: stride]
        y[:, oc] += np.einsum("nchw,c->nhw", patch, w[oc, :, i, j])
    if b is not None:
      y[:, oc] += b[oc]
  return y


def _tokens_to_nchw(t, h, w):
  return t.reshape(t.shape[0], h, w, -1).transpose(0, 3, 1, 2)


def _nchw_to_tokens(x):
  return x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)


def _attention_ref(t, sd, p, h, w, heads, sr):
  """Tokens [B,N,C] (row-major), the reference's efficient attention."""
  b, n, c = t.shape
  hd = c // heads
  q = _lin(t, sd, p + ".q").reshape(b, n, heads, hd).transpose(0, 2, 1, 3)
  src = t
  if sr > 1:
    x_ = _conv_nchw(_tokens_to_nchw(t, h, w), sd[p + ".sr.weight"], sd[p + ".sr.bias"], sr, 0)
    src = _ln(_nchw_to_tokens(x_), sd[p + ".norm.weight"], sd[p + ".norm.bias"], 1e-5)
  kv = _lin(src, sd, p + ".kv").reshape(b, -1, 2, heads, hd).transpose(2, 0, 3, 1, 4)
  k, v = kv[0], kv[1]
  a = (q @ k.transpose(0, 1, 3, 2)) * hd ** -0.5
  a = np.exp(a - a.max(-1, keepdims=True))
  a = a / a.sum(-1, keepdims=True)
  o = (a @ v).transpose(0, 2, 1, 3).reshape(b, n, c)
  return _lin(o, sd, p + ".proj")


def _mlp_ref(t, sd, p, h, w):
  y = _lin(t, sd, p + ".fc1")
  y = _nchw_to_tokens(_conv_nchw(_tokens_to_nchw(y, h, w), sd[p + ".dwconv.dwconv.weight"],
                                 sd[p + ".dwconv.dwconv.bias"], 1, 1, groups=y.shape[-1]))
  y = 0.5 * y * (1 + _erf(y / math.sqrt(2)))
  return _lin(y, sd, p + ".fc2")


def _block_ref(t, sd, p, h, w, heads, sr, eps=1e-6):
  t = t + _attention_ref(_ln(t, sd[p + ".norm1.weight"], sd[p + ".norm1.bias"], eps), sd, p + ".attn", h, w, heads, sr)
  return t + _mlp_ref(_ln(t, sd[p + ".norm2.weight"], sd[p + ".norm2.bias"], eps), sd, p + ".mlp", h, w)


def _bilinear_ref(x, oh, ow):
  """F.interpolate(bilinear, align_corners=False) on NCHW, float64, from the definition."""
  n, c, h, w = x.shape
  out = np.zeros((n, c, oh, ow))
  for i in range(oh):
    sy = max((i + 0.5) * h / oh - 0.5, 0.0)
    y0 = min(int(sy), h - 1)
    y1 = min(y0 + 1, h - 1)
    ly = sy - y0
    for j in range(ow):
      sx = max((j + 0.5) * w / ow - 0.5, 0.0)
      x0 = min(int(sx), w - 1)
      x1 = min(x0 + 1, w - 1)
      lx = sx - x0
      out[:, :, i, j] = ((1 - ly) * ((1 - lx) * x[:, :, y0, x0] + lx * x[:, :, y0, x1])
                         + ly * ((1 - lx) * x[:, :, y1, x0] + lx * x[:, :, y1, x1]))
  return out


def test_mit_block_and_mixffn_match_reference():
  """A MiT-b0 stage-1 style block (norm eps 1e-6, sr 2) as the encoder builds it."""
  h, w, c, heads, sr = 4, 6, 8, 2, 2
  cfg = sf.MiTConfig(embed_dims=(c, 8, 8, 8), num_heads=(heads, 1, 1, 1), depths=(1, 1, 1, 1),
                     sr_ratios=(sr, 1, 1, 1))
  blk = _abstract_zeros(lambda: sf.MixVisionTransformer(cfg, rngs=nnx.Rngs(1))).block1[0]
  sd = {"." + k: v for k, v in _rand_sd(blk, seed=3).items()}
  x = np.random.default_rng(11).standard_normal((1, h, w, c))
  y = np.asarray(blk(jnp.asarray(x.reshape(1, h * w, c), jnp.float32), h, w))
  ref = _block_ref(x.reshape(1, h * w, c), sd, "", h, w, heads, sr)
  np.testing.assert_allclose(y, ref, atol=TOL)
  # The tanh GELU would be far outside the tolerance: the exact (erf) form is what is implemented.
  t = np.random.default_rng(12).standard_normal((1, h * w, c)) * 2
  ffn_ref = _mlp_ref(t, sd, ".mlp", h, w)
  ffn = np.asarray(blk.mlp(jnp.asarray(t, jnp.float32), h, w))
  np.testing.assert_allclose(ffn, ffn_ref, atol=TOL)


def test_norm_eps_per_site():
  # eps per site (MODEL.md §3.4): blocks/stage norms 1e-6 in MiT-b*, patch-embed and attention sr norms 1e-5.
  mit = nnx.eval_shape(lambda: sf.MixVisionTransformer(sf.MIT_B0, rngs=nnx.Rngs(0)))
  assert mit.patch_embed2.norm.eps == 1e-5 and mit.block1[0].attn.norm.eps == 1e-5
  assert mit.block4[1].norm1.eps == 1e-6 and mit.block2[0].norm2.eps == 1e-6 and mit.norm3.eps == 1e-6
  assert mit.block4[0].attn.sr is None and mit.block3[0].attn.sr is not None  # sr_ratio 1 in stage 4 only
  assert mit.patch_embed1.proj.stride == (4, 4) and mit.patch_embed3.proj.stride == (2, 2)


def test_mit_b0_structure():
  mit = nnx.eval_shape(lambda: sf.MixVisionTransformer(sf.MIT_B0, rngs=nnx.Rngs(0)))
  shapes = {k: tuple(v.get_value().shape) for k, v in model_variables(mit).items()}
  assert len(shapes) == 176  # MODEL.md §4: mix_vit holds 176 state_dict tensors
  assert sum(int(np.prod(s)) for s in shapes.values()) == 3_319_392
  assert shapes["block1.0.attn.sr.weight"] == (8, 8, 32, 32)
  assert shapes["block3.1.mlp.dwconv.dwconv.weight"] == (3, 3, 1, 640)
  assert shapes["patch_embed1.proj.weight"] == (7, 7, 3, 32)


def test_tiny_mit_matches_reference_end_to_end():
  cfg = sf.MiTConfig(in_chans=3, embed_dims=(4, 8, 8, 8), num_heads=(1, 2, 2, 1), depths=(1, 1, 1, 1),
                     sr_ratios=(2, 2, 1, 1))
  mit = _abstract_zeros(lambda: sf.MixVisionTransformer(cfg, rngs=nnx.Rngs(3)))
  sd = {"." + k: v for k, v in _rand_sd(mit, seed=5).items()}
  x = np.random.default_rng(14).standard_normal((1, 3, 32, 32))
  outs = [np.asarray(o) for o in nnx.jit(lambda m, v: m(v))(mit, jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32))]
  cur = x
  for i in range(4):
    k, s = (7, 4) if i == 0 else (3, 2)
    p = f".patch_embed{i + 1}"
    y = _conv_nchw(cur, sd[p + ".proj.weight"], sd[p + ".proj.bias"], s, k // 2)
    h, w = y.shape[2:]
    t = _ln(_nchw_to_tokens(y), sd[p + ".norm.weight"], sd[p + ".norm.bias"], 1e-5)
    t = _block_ref(t, sd, f".block{i + 1}.0", h, w, cfg.num_heads[i], cfg.sr_ratios[i])
    t = _ln(t, sd[f".norm{i + 1}.weight"], sd[f".norm{i + 1}.bias"], 1e-6)
    cur = _tokens_to_nchw(t, h, w)
    np.testing.assert_allclose(outs[i].transpose(0, 3, 1, 2), cur, atol=TOL, err_msg=f"stage {i}")


def test_segformer_head_matches_reference():
  dims, e = (4, 6, 8, 10), 5
  head = _abstract_zeros(lambda: sf.SegFormerHead(dims, e, rngs=nnx.Rngs(4)))
  sd = _rand_sd(head, seed=6)
  rng = np.random.default_rng(15)
  feats = [rng.standard_normal((2, d, 12 // 2 ** i, 8 // 2 ** i)) for i, d in enumerate(dims[:3])]
  feats.append(rng.standard_normal((2, dims[3], 1, 1)))
  y = np.asarray(nnx.jit(lambda m, f: m(f))(head, [jnp.asarray(f.transpose(0, 2, 3, 1), jnp.float32) for f in feats]))
  parts = []
  for i in (3, 2, 1, 0):
    f = feats[i]
    t = _nchw_to_tokens(f) @ sd[f"linear_c{i + 1}.proj.weight"].T + sd[f"linear_c{i + 1}.proj.bias"]
    m = _tokens_to_nchw(t, f.shape[2], f.shape[3])
    parts.append(_bilinear_ref(m, 12, 8) if i else m)
  cat = np.concatenate(parts, axis=1)
  z = np.einsum("nchw,oc->nohw", cat, sd["linear_fuse.conv.weight"][:, :, 0, 0])
  bn = lambda a, k: sd[f"linear_fuse.bn.{k}"][None, :, None, None]  # noqa: E731
  z = (z - bn(z, "running_mean")) / np.sqrt(bn(z, "running_var") + 1e-5) * bn(z, "weight") + bn(z, "bias")
  ref = np.maximum(z, 0)
  assert y.shape == (2, 12, 8, e)
  np.testing.assert_allclose(y.transpose(0, 3, 1, 2), ref, atol=TOL)
  assert "linear_fuse.conv.bias" not in model_variables(head)  # ConvModule: no conv bias before the BN
  with pytest.raises(ValueError, match="4 feature maps"):
    head([jnp.zeros((1, 4, 4, 4))])
