"""Conv3d (depth-folded 2-D path and plain 3-D path), facev2v blocks (torch names) and dilate."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r3p.convert.torch_to_nnx import model_variables
from r3p.nn.conv3d import AvgPool, Conv3d, ConvBlock, DownBlock, ResBlock, UpBlock, dilate


def _ref_conv3d(x, w, b, pad):
  """Direct float64 NDHWC correlation with torch weight layout [O, I, kd, kh, kw]."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0),) + ((pad, pad),) * 3 + ((0, 0),))
  o, i, kd, kh, kw = w.shape
  n, d, h, ww, _ = x.shape
  od, oh, ow = d - kd + 1, h - kh + 1, ww - kw + 1
  y = np.zeros((n, od, oh, ow, o)) + b
  for a in range(kd):
    for p in range(kh):
      for q in range(kw):
        y += np.einsum("ndhwi,oi->ndhwo", x[:, a:a + od, p:p + oh, q:q + ow], w[:, :, a, p, q].astype(np.float64))
  return y


@pytest.mark.parametrize("k,pad", [(3, 1), (1, 0), (5, 2)])
def test_conv3d_matches_direct_correlation(k, pad):
  rng = np.random.default_rng(k)
  conv = Conv3d(3, 4, k, padding=pad, rngs=nnx.Rngs(0))
  w_t = rng.standard_normal((4, 3, k, k, k)).astype(np.float32)  # torch layout
  b = rng.standard_normal(4).astype(np.float32)
  conv.weight[...] = jnp.asarray(np.transpose(w_t, (2, 3, 4, 1, 0)))
  conv.bias[...] = jnp.asarray(b)
  x = rng.standard_normal((2, 5, 6, 7, 3)).astype(np.float32)
  got = np.asarray(conv(jnp.asarray(x)))
  want = _ref_conv3d(x, w_t, b, pad)
  assert got.shape == want.shape
  assert np.abs(got - want).max() < 1e-4


def test_block_state_names_follow_torch():
  r = nnx.Rngs(0)
  names = set(model_variables(DownBlock(4, 8, dim=3, rngs=r)))
  assert {"layers.0.layers.0.weight", "layers.0.layers.1.running_var"} <= names
  names = set(model_variables(UpBlock(4, 8, dim=2, rngs=r)))
  assert {"layers.1.layers.0.weight", "layers.1.layers.1.num_batches_tracked"} <= names
  names = set(model_variables(ResBlock(4, dim=3, rngs=r)))
  assert {"layers.0.layers.0.running_mean", "layers.1.layers.2.weight"} <= names
  assert model_variables(ResBlock(4, dim=3, rngs=r))["layers.1.layers.2.weight"][...].shape == (3, 3, 3, 4, 4)
  with pytest.raises(ValueError, match="pattern"):
    ConvBlock("CXA", 1, 1, 3, 1, 1, dim=2, rngs=r)


def test_avgpool_and_upsample_shapes():
  x = jnp.arange(2 * 3 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 3, 4, 4, 1)
  y = AvgPool()(x)
  assert y.shape == (2, 3, 2, 2, 1)
  np.testing.assert_allclose(np.asarray(y)[0, 0, 0, 0, 0], (0 + 1 + 4 + 5) / 4)


def test_dilate_reflect_maxpool():
  rng = np.random.default_rng(0)
  x = rng.random((1, 9, 10, 1)).astype(np.float32)
  got = np.asarray(dilate(jnp.asarray(x), 7))
  xp = np.pad(x[0, :, :, 0], 3, mode="reflect")  # torch 'reflect' = numpy 'reflect' (edge not repeated)
  want = np.array([[xp[i:i + 7, j:j + 7].max() for j in range(10)] for i in range(9)])
  np.testing.assert_array_equal(got[0, :, :, 0], want)
