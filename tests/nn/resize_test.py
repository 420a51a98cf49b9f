"""resize_bilinear vs a float64 NumPy reference written from torch's documented algorithm, and vs the fixture
record that is an AA resize (`superresolution.bg_encoder/in0` = AA-resize(bg_img, 512 → 256))."""
import numpy as np
import pytest

from tests.conftest import shared_path

import jax.numpy as jnp

from r3p.nn.resize import aa_taps, resize_bilinear


def _ref_weights(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
  """Dense [out, in] float64 interpolation matrix (torch F.interpolate bilinear, align_corners=False).

  antialias: triangle filter whose support is stretched by the downsampling factor, taps from
  trunc(center − support + 0.5) to trunc(center + support + 0.5) (exclusive), normalised per output.
  plain: source = max((i + 0.5)·in/out − 0.5, 0), linear between floor and floor + 1 (clamped).
  """
  scale = float(np.float32(n_in) / np.float32(n_out))  # torch keeps the scale in float32 (area_pixel_compute_scale)
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    if antialias:
      support = scale if scale >= 1 else 1.0
      center = scale * (i + 0.5)
      lo = max(int(center - support + 0.5), 0)
      hi = min(int(center + support + 0.5), n_in)
      for j in range(lo, hi):
        m[i, j] = max(0.0, 1.0 - abs((j - center + 0.5) / max(scale, 1.0)))
      m[i] /= m[i].sum()
    else:
      s = max((i + 0.5) * scale - 0.5, 0.0)
      i0 = min(int(np.floor(s)), n_in - 1)
      i1 = min(i0 + 1, n_in - 1)
      t = s - i0
      m[i, i0] += 1 - t
      m[i, i1] += t
  return m


def _ref_resize(x: np.ndarray, size, antialias: bool) -> np.ndarray:
  mh = _ref_weights(x.shape[1], size[0], antialias)
  mw = _ref_weights(x.shape[2], size[1], antialias)
  y = np.einsum("oh,bhwc->bowc", mh, x.astype(np.float64))
  return np.einsum("bowc,pw->bopc", y, mw)


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("src,dst", [((512, 512), (256, 256)), ((512, 512), (64, 64)), ((128, 128), (256, 256)),
                                     ((37, 50), (16, 21)), ((5, 7), (11, 3)), ((300, 20), (128, 20))])
def test_resize_matches_numpy_reference(src, dst, antialias):
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2,) + src + (3,)).astype(np.float32)
  mine = np.asarray(resize_bilinear(jnp.asarray(x), dst, antialias=antialias))
  ref = _ref_resize(x, dst, antialias)
  assert mine.shape == ref.shape
  np.testing.assert_allclose(mine, ref, atol=5e-6, rtol=0)  # float32 source coordinates and sums vs float64


def test_aa_downsample_is_not_plain_bilinear():
  """512 → 256: the AA filter is [1,3,3,1]/8 in the interior (plain bilinear would be [1,1]/2)."""
  idx, w = aa_taps(512, 256)
  np.testing.assert_array_equal(idx[10, :4], [19, 20, 21, 22])
  np.testing.assert_array_equal(w[10, :4], np.array([1, 3, 3, 1], np.float32) / 8)
  # At the border the truncated filter is renormalised: taps 0..2 with weights (3, 3, 1)/7.
  np.testing.assert_allclose(w[0, :3], np.array([3, 3, 1]) / 7, rtol=1e-7)
  x = np.random.default_rng(1).uniform(-1, 1, (1, 64, 64, 1)).astype(np.float32)
  d = np.abs(np.asarray(resize_bilinear(jnp.asarray(x), (32, 32), True))
             - np.asarray(resize_bilinear(jnp.asarray(x), (32, 32), False))).max()
  assert d > 0.05


def test_same_size_is_identity_and_bad_input_raises():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 8, 8, 2)).astype(np.float32))
  assert resize_bilinear(x, (8, 8), True) is x
  with pytest.raises(ValueError, match="NHWC"):
    resize_bilinear(x[0], (4, 4), True)


def test_resize_matches_fixture_bg_record():
  """bg_encoder's recorded input is torch's AA resize of the background image (tolerance 1e-6 abs)."""
  from r3p.fixture_io import FixtureCase, nchw_to_nhwc, nhwc_to_nchw
  case = FixtureCase(str(shared_path("fixtures", "r3p_model", "b1_frontal")))
  name = "superresolution.bg_encoder/in0"
  if not case.has(name):
    pytest.skip(f"{case.dir}: no record {name}")
  bg = jnp.asarray(nchw_to_nhwc(case.inputs["bg_img"]))
  mine = nhwc_to_nchw(np.asarray(resize_bilinear(bg, (256, 256), antialias=True)))
  d, _ = case.compare(mine, name)
  assert d <= 1e-6, d
