"""grid_sample_2d / grid_sample_3d against a NumPy float64 reference written from torch's documented semantics.

Reference semantics (torch.nn.functional.grid_sample docs): grid values in [-1, 1] map to pixel coordinates
((g+1)/2)(size−1) with align_corners=True and ((g+1)·size − 1)/2 with align_corners=False; (bi/tri)linear
interpolation between the 2^n neighbouring pixels with weights Π(1 − |coord − corner|); 'zeros' padding reads 0
outside the input, 'border' clamps the coordinate to [0, size−1] first.
Tolerance: 1e-5 absolute on O(1) data (float32 rounding only).
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r3p.nn.grid_sample import grid_sample_2d, grid_sample_3d

TOL = 1e-5


def _ref(x, grid, padding_mode, align_corners):
  """x [N, *S, C] float64, grid [N, *O, nd] ordered (x=last spatial axis, ...) -> [N, *O, C]."""
  x = np.asarray(x, np.float64)
  grid = np.asarray(grid, np.float64)
  n, *spatial, c = x.shape
  nd = len(spatial)
  out_shape = grid.shape[1:-1]
  g = grid.reshape(n, -1, nd)
  coords = []
  for a in range(nd):  # grid component a indexes spatial axis nd-1-a
    size = spatial[nd - 1 - a]
    u = ((g[..., a] + 1) / 2) * (size - 1) if align_corners else ((g[..., a] + 1) * size - 1) / 2
    if padding_mode == "border":
      u = np.clip(u, 0, size - 1)
    coords.append(u)
  out = np.zeros((n, g.shape[1], c))
  base = [np.floor(u).astype(np.int64) for u in coords]
  for offs in itertools.product((0, 1), repeat=nd):
    wgt = np.ones(g.shape[:2])
    valid = np.ones(g.shape[:2], bool)
    idx = [None] * nd
    for a in range(nd):
      i = base[a] + offs[a]
      size = spatial[nd - 1 - a]
      wgt = wgt * (1 - np.abs(coords[a] - i))
      valid &= (i >= 0) & (i < size)
      idx[nd - 1 - a] = np.clip(i, 0, size - 1)
    for b in range(n):
      vals = x[(b,) + tuple(ix[b] for ix in idx)]
      out[b] += np.where(valid[b, :, None], vals, 0.0) * wgt[b, :, None]
  return out.reshape((n,) + out_shape + (c,))


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [True, False])
def test_grid_sample_2d_matches_reference(padding_mode, align_corners):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
  grid = rng.uniform(-1.3, 1.3, (2, 5, 11, 2)).astype(np.float32)  # includes out-of-range coordinates
  grid[0, 0, :4] = [[-1, -1], [1, 1], [-1, 1], [1, -1]]  # exact corners
  got = np.asarray(grid_sample_2d(jnp.asarray(x), jnp.asarray(grid), padding_mode=padding_mode,
                                  align_corners=align_corners))
  want = _ref(x, grid, padding_mode, align_corners)
  assert got.shape == want.shape
  assert np.abs(got - want).max() < TOL


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [True, False])
def test_grid_sample_3d_matches_reference(padding_mode, align_corners):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 5, 6, 7, 4)).astype(np.float32)
  grid = rng.uniform(-1.3, 1.3, (2, 3, 4, 5, 3)).astype(np.float32)
  grid[1, 0, 0, :2] = [[-1, -1, -1], [1, 1, 1]]
  got = np.asarray(grid_sample_3d(jnp.asarray(x), jnp.asarray(grid), padding_mode=padding_mode,
                                  align_corners=align_corners))
  want = _ref(x, grid, padding_mode, align_corners)
  assert got.shape == want.shape
  assert np.abs(got - want).max() < TOL


def test_identity_grid_align_corners_is_exact():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((1, 4, 5, 6, 2)).astype(np.float32)
  lin = lambda n: 2.0 * (np.arange(n, dtype=np.float32) / np.float32(n - 1)) - 1.0
  z, y, xx = np.meshgrid(lin(4), lin(5), lin(6), indexing="ij")
  grid = np.stack([xx, y, z], -1)[None]
  got = np.asarray(grid_sample_3d(jnp.asarray(x), jnp.asarray(grid), padding_mode="zeros", align_corners=True))
  np.testing.assert_allclose(got, x, atol=1e-6)


def test_zeros_padding_far_outside_is_zero_and_border_is_edge():
  x = jnp.arange(12, dtype=jnp.float32).reshape(1, 3, 4, 1)
  grid = jnp.array([[[[5.0, 5.0], [-5.0, -5.0]]]])
  assert np.all(np.asarray(grid_sample_2d(x, grid, padding_mode="zeros")) == 0)
  b = np.asarray(grid_sample_2d(x, grid, padding_mode="border"))[0, 0, :, 0]
  np.testing.assert_allclose(b, [11.0, 0.0])


def test_jit_and_bf16_input():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((1, 3, 4, 5, 2)), jnp.bfloat16)
  grid = jnp.asarray(rng.uniform(-1, 1, (1, 2, 2, 2, 3)), jnp.float32)
  f = jax.jit(lambda a, g: grid_sample_3d(a, g, padding_mode="border", align_corners=True))
  y = f(x, grid)
  assert y.dtype == jnp.bfloat16
  want = _ref(np.asarray(x.astype(jnp.float32)), np.asarray(grid), "border", True)
  assert np.abs(np.asarray(y, np.float32) - want).max() < 0.05


def test_bad_input_raises():
  with pytest.raises(ValueError, match="grid must be"):
    grid_sample_2d(jnp.zeros((1, 3, 3, 1)), jnp.zeros((1, 2, 2, 3)))
  with pytest.raises(ValueError, match="padding_mode"):
    grid_sample_3d(jnp.zeros((1, 2, 3, 3, 1)), jnp.zeros((1, 2, 2, 2, 3)), padding_mode="reflection")
