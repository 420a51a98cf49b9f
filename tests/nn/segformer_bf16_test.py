"""bfloat16 compute for the SegFormer modules and the SECC motion adapter (dtype=bf16, fp32 or bf16 params).

Checks: outputs come out in the compute dtype, parameters keep `param_dtype`, LayerNorm/softmax/BatchNorm statistics
stay fp32 (results finite), and bf16 results track fp32 within bf16 rounding: max|Δ| ≤ 3e-2 of the fp32 output's
max|value| (bf16 has an 8-bit mantissa, 2^-8 ≈ 4e-3 per rounding; a few roundings compound through each module).
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.convert.torch_to_nnx import export_state_dict, load_state_dict, model_variables
from r3p.models import motion_adapter as ma
from r3p.nn import segformer as sf

REL = 3e-2


def _pair(ctor, seed):
  """(fp32 module, bf16-compute module with fp32 params), same random weights (abstract init, numpy fill)."""
  rng = np.random.default_rng(seed)
  mods = []
  for dt in (jnp.float32, jnp.bfloat16):
    m = nnx.eval_shape(lambda dt=dt: ctor(dt))
    for v in model_variables(m).values():
      a = v.get_value()
      v.set_value(np.zeros(a.shape, a.dtype))
    mods.append(m)
  sd = {}
  for k, v in export_state_dict(mods[0]).items():
    fan_in = int(np.prod(v.shape[1:])) if v.ndim >= 2 else 25  # torch layouts: [O, I, ...] / [out, in]
    val = rng.standard_normal(v.shape) / np.sqrt(fan_in)  # O(1) activations through every layer
    if k.endswith("running_var"):
      val = 0.5 + np.abs(val)
    elif k.endswith("weight") and v.ndim == 1:
      val = 1.0 + val
    sd[k] = val.astype(v.dtype)
  unused = [k for k in sd if k.endswith("resample_filter")]
  for m in mods:
    load_state_dict(m, sd, unused=unused)
  return mods


def _check(y32, y16):
  y32, y16 = np.asarray(y32, np.float32), np.asarray(y16.astype(jnp.float32))
  assert np.isfinite(y16).all()
  d = np.abs(y16 - y32).max()
  scale = np.abs(y32).max()
  print(f"bf16 vs fp32: {d / scale:.3g} of max|fp32|")
  assert d <= REL * scale, f"bf16 vs fp32 max|Δ| {d:.3g} > {REL} × {scale:.3g}"
  assert d > 0  # the bf16 path really computes in bf16


def test_mit_and_head_bf16():
  cfg = sf.MiTConfig(embed_dims=(8, 8, 16, 16), num_heads=(1, 2, 2, 2), depths=(1, 1, 1, 1), sr_ratios=(4, 2, 1, 1))

  def net(dt):
    class Net(nnx.Module):
      def __init__(self):
        self.mix_vit = sf.MixVisionTransformer(cfg, dtype=dt, rngs=nnx.Rngs(0))
        self.fuse_head = sf.SegFormerHead(cfg.embed_dims, 16, dtype=dt, rngs=nnx.Rngs(1))

      def __call__(self, x):
        feats = self.mix_vit(x)
        return feats, self.fuse_head(feats)
    return Net()

  m32, m16 = _pair(net, seed=3)
  x = jax.random.uniform(jax.random.key(2), (1, 64, 64, 3), minval=-1, maxval=1)
  f16, h16 = nnx.jit(lambda m, v: m(v))(m16, x)
  f32, h32 = nnx.jit(lambda m, v: m(v))(m32, x)
  assert h16.dtype == jnp.bfloat16 and all(f.dtype == jnp.bfloat16 for f in f16)
  assert m16.fuse_head.linear_fuse.bn.running_var[...].dtype == jnp.float32
  assert m16.mix_vit.block2[0].attn.q.weight[...].dtype == jnp.float32  # param_dtype stays fp32
  for a, b in zip(f32, f16):
    _check(a, b)
  _check(h32, h16)


def test_secc_branch_bf16_small():
  m32, m16 = _pair(lambda dt: ma.SegFormerSECC2PlaneBackbone(dtype=dt, rngs=nnx.Rngs(0)), seed=4)
  x = jax.random.uniform(jax.random.key(3), (1, 64, 64, 9), minval=-1, maxval=1)
  p16 = nnx.jit(lambda m, v: m(v))(m16, x)
  assert p16.dtype == jnp.bfloat16 and p16.shape == (1, 3, 32, 32, 32)
  _check(nnx.jit(lambda m, v: m(v))(m32, x), p16)


def test_bf16_params():
  m = nnx.eval_shape(lambda: ma.SegFormerSECC2PlaneBackbone(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                                                             rngs=nnx.Rngs(0)))
  params = jax.tree.leaves(nnx.state(m, nnx.Param))
  assert params and all(p.dtype == jnp.bfloat16 for p in params)
