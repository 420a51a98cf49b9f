import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r3p.convert import torch_to_nnx as t2n
from r3p.nn import layers


def _np_conv2d(x, w, b, stride, pad, dil, groups):
  """Direct NCHW convolution with torch weights [O, I/g, kh, kw] (slow reference)."""
  n, c, h, wd = x.shape
  o, ig, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  oh = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
  ow = (wd + 2 * pad - dil * (kw - 1) - 1) // stride + 1
  y = np.zeros((n, o, oh, ow))
  og = o // groups
  for oc in range(o):
    g = oc // og
    for i in range(kh):
      for j in range(kw):
        patch = xp[:, g * ig:(g + 1) * ig, i * dil: i * dil + stride * oh: stride, j * dil: j * dil + stride * ow: stride]
        y[:, oc] += np.einsum("nchw,c->nhw", patch, w[oc, :, i, j])
    y[:, oc] += b[oc]
  return y


@pytest.mark.parametrize("stride,pad,dil,groups", [(1, 1, 1, 1), (2, 0, 1, 1), (1, 2, 2, 2), (2, 1, 1, 4)])
def test_conv2d_matches_torch_semantics(stride, pad, dil, groups):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
  w = rng.standard_normal((8, 4 // groups, 3, 3)).astype(np.float32)
  b = rng.standard_normal(8).astype(np.float32)
  conv = layers.Conv2d(4, 8, 3, stride=stride, padding=pad, dilation=dil, groups=groups, rngs=nnx.Rngs(0))
  t2n.load_state_dict(conv, {"weight": w, "bias": b})
  y = conv(jnp.asarray(x.transpose(0, 2, 3, 1)))
  ref = _np_conv2d(x.astype(np.float64), w, b, stride, pad, dil, groups)
  np.testing.assert_allclose(np.asarray(y).transpose(0, 3, 1, 2), ref, atol=1e-5)


def test_loader_roundtrip_and_errors():
  class Net(nnx.Module):
    def __init__(self):
      self.fc = layers.Linear(3, 5, rngs=nnx.Rngs(0))
      self.bn = layers.BatchNorm(5)
      self.blocks = nnx.List([layers.Conv2d(2, 2, 1, rngs=nnx.Rngs(1))])

  net = Net()
  sd = t2n.export_state_dict(net)
  assert set(sd) == {"fc.weight", "fc.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                     "bn.num_batches_tracked", "blocks.0.weight", "blocks.0.bias"}
  assert sd["fc.weight"].shape == (5, 3) and sd["blocks.0.weight"].shape == (2, 2, 1, 1)
  sd2 = {k: (v + 1).astype(v.dtype) for k, v in sd.items()}
  t2n.load_state_dict(net, sd2)
  for k, v in t2n.export_state_dict(net).items():
    np.testing.assert_array_equal(v, sd2[k])
  with pytest.raises(t2n.StateDictError, match="missing key fc.bias"):
    t2n.load_state_dict(net, {k: v for k, v in sd.items() if k != "fc.bias"})
  with pytest.raises(t2n.StateDictError, match="unexpected key extra"):
    t2n.load_state_dict(net, {**sd, "extra": np.zeros(1)})
  t2n.load_state_dict(net, {**sd, "extra": np.zeros(1)}, unused=["extra"])
  with pytest.raises(t2n.StateDictError, match="shape mismatch for fc.weight"):
    t2n.load_state_dict(net, {**sd, "fc.weight": np.zeros((3, 5), np.float32)})


def test_fold_spectral_and_weight_norm():
  rng = np.random.default_rng(1)
  w = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
  u = rng.standard_normal(4).astype(np.float32)
  v = rng.standard_normal(12).astype(np.float32)
  out = t2n.fold_spectral_norm({"c.weight_orig": w, "c.weight_u": u, "c.weight_v": v, "c.bias": u})
  assert set(out) == {"c.weight", "c.bias"}
  np.testing.assert_allclose(out["c.weight"], w / (u @ (w.reshape(4, -1) @ v)), rtol=1e-5)
  g = rng.standard_normal((1, 1, 5)).astype(np.float32)
  vv = rng.standard_normal((6, 3, 5)).astype(np.float32)
  out = t2n.fold_weight_norm({"p.weight_g": g, "p.weight_v": vv}, dim=2)
  np.testing.assert_allclose(out["p.weight"], g * vv / np.sqrt((vv ** 2).sum(axis=(0, 1), keepdims=True)), rtol=1e-5)


def test_interpolate_bilinear_matches_half_pixel_formula():
  x = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
  y = layers.interpolate_bilinear(x, (8, 8))
  # torch: F.interpolate(x, 8, mode='bilinear', align_corners=False)[0,0,0,:2] == [0, 0.25]
  np.testing.assert_allclose(np.asarray(y[0, 0, :3, 0]), [0.0, 0.25, 0.75], atol=1e-6)
  y2 = layers.interpolate_bilinear(x, (2, 2))
  np.testing.assert_allclose(np.asarray(y2[0, :, :, 0]), [[2.5, 4.5], [10.5, 12.5]], atol=1e-6)
