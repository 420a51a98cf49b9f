"""Sample placement along rays (MODEL.md §2.6, §2.9): stratified coarse depths, importance (fine) depths via
`sample_pdf`, and the merge of both sets. The random draws are arguments (the fixtures record them); callers
draw them from a typed key when they are not given.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

PDF_EPS = 1e-5            # sample_pdf: weights + 1e-5, denominators below 1e-5 set to 1
IMPORTANCE_FLOOR = 0.01   # sample_importance: smoothed weights + 0.01


def linspace_steps(n: int) -> Array:
  """float32 arange(n)/(n−1), as `math_utils.linspace`."""
  return jnp.arange(n, dtype=jnp.float32) / jnp.float32(n - 1)


def stratified(start: Array, end: Array, n_samples: int, jitter: Array) -> Array:
  """Coarse depths [B,N,S]: start + k/(S−1)·(end − start) + jitter·(end − start)/(S−1).

  start, end [B,N,1]; jitter [B,N,S] uniform in [0,1) (draw #1; applied in eval too, so the last sample can pass
  `end` by up to one step, as officially)."""
  steps = linspace_steps(n_samples)
  depths = start + steps * (end - start)
  delta = (end - start) / (n_samples - 1)
  return depths + jitter * delta


def sample_pdf(bins: Array, weights: Array, u: Array) -> Array:
  """Inverse-CDF sampling (`sample_pdf`, det=False) with the uniforms given.

  Args:
    bins: [R, K+2] bin edges (the official passes the 47 coarse mid-depths).
    weights: [R, K] (the official passes weights[:, 1:-1], K = 45).
    u: [R, n] uniforms in [0,1) (draw #2).
  Returns:
    [R, n] depths. Only bins[0..K] can be reached (official).
  """
  n_bins = weights.shape[-1]
  weights = weights + PDF_EPS
  pdf = weights / jnp.sum(weights, axis=-1, keepdims=True)
  cdf = jnp.cumsum(pdf, axis=-1)
  cdf = jnp.concatenate([jnp.zeros_like(cdf[:, :1]), cdf], axis=-1)         # [R, K+1]
  # searchsorted(cdf, u, right=True): number of cdf entries <= u.
  inds = jnp.sum(cdf[:, None, :] <= u[:, :, None], axis=-1).astype(jnp.int32)
  below = jnp.maximum(inds - 1, 0)
  above = jnp.minimum(inds, n_bins)
  cdf_lo = jnp.take_along_axis(cdf, below, axis=-1)
  cdf_hi = jnp.take_along_axis(cdf, above, axis=-1)
  bins_lo = jnp.take_along_axis(bins, below, axis=-1)
  bins_hi = jnp.take_along_axis(bins, above, axis=-1)
  denom = cdf_hi - cdf_lo
  denom = jnp.where(denom < PDF_EPS, 1.0, denom)
  return bins_lo + (u - cdf_lo) / denom * (bins_hi - bins_lo)


def importance_weights(weights: Array) -> Array:
  """Smoothing of the coarse weights before sampling: max_pool1d(2, 1, pad 1 with −inf) -> avg_pool1d(2, 1)
  -> + 0.01. [R, S−1] -> [R, S−1]."""
  padded = jnp.concatenate([weights[:, :1], weights, weights[:, -1:]], axis=-1)  # -inf padding == edge copy
  m = jnp.maximum(padded[:, :-1], padded[:, 1:])                                # [R, S]
  a = (m[:, :-1] + m[:, 1:]) / 2                                               # [R, S−1]
  return a + IMPORTANCE_FLOOR


def importance(depths_coarse: Array, weights: Array, u: Array) -> Array:
  """Fine depths [B,N,n] from the coarse depths [B,N,S], coarse weights [B,N,S−1] and u [B·N, n]
  (`sample_importance`; rays flattened batch-major, as the fixture's `importance_u`). No gradient flows
  (official `torch.no_grad()`)."""
  b, n, s = depths_coarse.shape
  z = jax.lax.stop_gradient(depths_coarse).reshape(b * n, s)
  w = importance_weights(jax.lax.stop_gradient(weights).reshape(b * n, s - 1).astype(jnp.float32))
  mids = 0.5 * (z[:, :-1] + z[:, 1:])
  fine = sample_pdf(mids, w[:, 1:-1], u.astype(jnp.float32))
  return jax.lax.stop_gradient(fine).reshape(b, n, -1)


def unify(depths1: Array, depths2: Array, *others: tuple[Array, Array]):
  """Merge two sample sets along the sample axis and sort by depth (`unify_samples`).

  depths1 [B,N,S1], depths2 [B,N,S2]; each of `others` is a pair (v1 [B,N,S1,...], v2 [B,N,S2,...]) gathered
  with the same order. Returns (depths [B,N,S1+S2], *values). The sort is stable (ties keep coarse first).
  """
  depths = jnp.concatenate([depths1, depths2], axis=2)
  order = jnp.argsort(depths, axis=2, stable=True)
  out = [jnp.take_along_axis(depths, order, axis=2)]
  for v1, v2 in others:
    v = jnp.concatenate([v1, v2], axis=2)
    idx = order.reshape(order.shape + (1,) * (v.ndim - 3))
    out.append(jnp.take_along_axis(v, idx, axis=2))
  return tuple(out)
