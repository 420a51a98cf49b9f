"""Streaming FID statistics and the Fréchet distance (float64)."""
import numpy as np
import pytest

from eval import fid


def test_streaming_stats_equal_np_cov():
  x = np.random.default_rng(0).normal(3.0, 2.0, (257, 16))
  rs = fid.RunningStats()
  for s in range(0, 257, 10):
    rs.update(x[s:s + 10])
  np.testing.assert_allclose(rs.mu, x.mean(0), rtol=0, atol=1e-13)
  np.testing.assert_allclose(rs.sigma, np.cov(x, rowvar=False), rtol=0, atol=1e-12)


def test_frechet_zero_for_same_stats_and_grows_with_shift():
  x = np.random.default_rng(1).normal(size=(400, 8))
  mu, s = fid.statistics(x)
  assert abs(fid.frechet_distance(mu, s, mu, s)) < 1e-9
  d1 = fid.frechet_distance(mu, s, mu + 0.1, s)
  d2 = fid.frechet_distance(mu, s, mu + 0.5, s)
  assert 0 < d1 < d2
  assert abs(d1 - 8 * 0.01) < 1e-9  # ||Δmu||^2 when the covariances are equal


def test_eps_offset_for_singular_covariances():
  x = np.random.default_rng(2).normal(size=(5, 32))  # rank 4 covariance in 32 dims
  y = np.random.default_rng(3).normal(size=(5, 32))
  t = fid.frechet_terms(*fid.statistics(x), *fid.statistics(y))
  assert np.isfinite(t["fid"]) and t["fid"] > 0


def test_statistics_file_round_trip(tmp_path):
  x = np.random.default_rng(4).normal(size=(50, 6))
  rs = fid.RunningStats()
  rs.update(x)
  rs.save(str(tmp_path / "s.npz"))
  mu, s = fid.load_statistics(str(tmp_path / "s.npz"))
  np.testing.assert_array_equal(mu, rs.mu)
  np.savez(tmp_path / "bad.npz", m=mu)
  with pytest.raises(fid.FIDError, match="needs arrays 'mu' and 'sigma'"):
    fid.load_statistics(str(tmp_path / "bad.npz"))


def test_kid_near_zero_for_same_distribution():
  rng = np.random.default_rng(5)
  a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
  c = rng.normal(1.0, 1.0, size=(300, 16))
  same, _ = fid.kid(a, b, subsets=10, subset_size=100)
  diff, _ = fid.kid(a, c, subsets=10, subset_size=100)
  assert abs(same) < 0.05 < diff
