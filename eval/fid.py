"""FID and KID: streaming feature statistics and the Fréchet distance exactly as pytorch-fid computes it.

Features (pool3 of the FID Inception, `eval.inception`) are folded batch by batch into float64 running statistics
(count, mean, centred second moment, merged with Chan et al.'s pairwise update), so memory does not grow with the
number of frames. `frechet_distance` is pytorch-fid 0.3.0's `calculate_frechet_distance`:

  d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))

with scipy's `sqrtm`; if the product's root is not finite, eps (1e-6) is added to both diagonals and the root
redone; a complex root is accepted when its diagonal's imaginary parts are within 1e-3 of 0 (real part used).
Statistics files are `.npz` with `mu`, `sigma` (pytorch-fid's files load as they are).
"""
from __future__ import annotations

import os
import warnings

import numpy as np


class FIDError(ValueError):
  pass


class RunningStats:
  """Streaming mean / covariance of feature vectors in float64 (np.cov convention: unbiased, N - 1).

  Optionally keeps a uniform reservoir sample of at most `keep` features (for KID), seeded."""

  def __init__(self, dim: int | None = None, keep: int = 0, seed: int = 0):
    self.n = 0
    self.mean = None if dim is None else np.zeros(dim)
    self.m2 = None if dim is None else np.zeros((dim, dim))
    self.keep = int(keep)
    self._rng = np.random.default_rng(seed)
    self.sample: list[np.ndarray] = []

  def update(self, feats) -> None:
    x = np.asarray(feats, np.float64)
    if x.ndim != 2:
      raise FIDError(f"features must be [N, D], got shape {x.shape}")
    nb = x.shape[0]
    if nb == 0:
      return
    if self.mean is None:
      self.mean = np.zeros(x.shape[1])
      self.m2 = np.zeros((x.shape[1], x.shape[1]))
    if x.shape[1] != self.mean.shape[0]:
      raise FIDError(f"feature dim {x.shape[1]} != {self.mean.shape[0]} of earlier batches")
    mb = x.mean(axis=0)
    xc = x - mb
    m2b = xc.T @ xc
    n = self.n + nb
    delta = mb - self.mean
    self.m2 += m2b + np.outer(delta, delta) * (self.n * nb / n)
    self.mean = self.mean + delta * (nb / n)
    self.n = n
    if self.keep:
      for row in x:  # reservoir sampling (Algorithm R), seeded
        if len(self.sample) < self.keep:
          self.sample.append(row.copy())
        else:
          j = int(self._rng.integers(0, self._seen_plus_one()))
          if j < self.keep:
            self.sample[j] = row.copy()
        self._seen = getattr(self, "_seen", 0) + 1

  def _seen_plus_one(self) -> int:
    return getattr(self, "_seen", 0) + 1

  @property
  def mu(self) -> np.ndarray:
    if self.n == 0:
      raise FIDError("no features were accumulated")
    return self.mean.copy()

  @property
  def sigma(self) -> np.ndarray:
    if self.n < 2:
      raise FIDError(f"a covariance needs at least 2 feature vectors, got {self.n}")
    return self.m2 / (self.n - 1)

  def save(self, path: str) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, mu=self.mu, sigma=self.sigma, n=np.int64(self.n))
    os.replace(tmp, path)


def statistics(feats) -> tuple[np.ndarray, np.ndarray]:
  rs = RunningStats()
  rs.update(feats)
  return rs.mu, rs.sigma


def load_statistics(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from an `.npz` with keys mu, sigma (pytorch-fid's format)."""
  try:
    with np.load(path) as z:
      if "mu" not in z.files or "sigma" not in z.files:
        raise FIDError(f"{path}: statistics file needs arrays 'mu' and 'sigma' (has {', '.join(z.files)})")
      return np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
  except FIDError:
    raise
  except Exception as e:  # noqa: BLE001 - any unreadable file is one line
    raise FIDError(f"{path}: not a readable .npz statistics file ({type(e).__name__}: {e})") from None


def frechet_terms(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> dict[str, float]:
  """The Fréchet distance and its terms (mean_term, trace_sigma1, trace_sigma2, trace_covmean), float64."""
  from scipy import linalg
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape:
    raise FIDError(f"mean vectors have different lengths {mu1.shape} vs {mu2.shape}")
  if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
    raise FIDError(f"covariances {sigma1.shape}, {sigma2.shape} do not match mean length {mu1.shape[0]}")
  diff = mu1 - mu2
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
  eps_used = False
  if not np.isfinite(covmean).all():
    eps_used = True
    offset = np.eye(sigma1.shape[0]) * eps
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      m = np.max(np.abs(covmean.imag))
      raise FIDError(f"imaginary component {m} in sqrtm(sigma1 sigma2): statistics are inconsistent")
    covmean = covmean.real
  tr_covmean = float(np.trace(covmean))
  out = {"mean_term": float(diff.dot(diff)), "trace_sigma1": float(np.trace(sigma1)),
         "trace_sigma2": float(np.trace(sigma2)), "trace_covmean": tr_covmean}
  out["fid"] = out["mean_term"] + out["trace_sigma1"] + out["trace_sigma2"] - 2 * tr_covmean
  out["eps_offset_used"] = eps_used
  return out


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  return frechet_terms(mu1, sigma1, mu2, sigma2, eps)["fid"]


def kid(feats1, feats2, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
  """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3, averaged over random subsets (mean, std), as torch-fidelity / clean-fid compute it."""
  x = np.asarray(feats1, np.float64)
  y = np.asarray(feats2, np.float64)
  m = min(subset_size, len(x), len(y))
  if m < 2:
    raise FIDError(f"KID needs at least 2 features per set, got {len(x)} and {len(y)}")
  d = x.shape[1]
  rng = np.random.default_rng(seed)
  vals = []
  for _ in range(subsets):
    a = x[rng.choice(len(x), m, replace=False)]
    b = y[rng.choice(len(y), m, replace=False)]
    kxx = (a @ a.T / d + 1) ** 3
    kyy = (b @ b.T / d + 1) ** 3
    kxy = (a @ b.T / d + 1) ** 3
    mmd = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
           - 2 * kxy.mean())
    vals.append(mmd)
  return float(np.mean(vals)), float(np.std(vals))
