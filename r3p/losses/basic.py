"""Pixel, opacity, density, adversarial and λ-tuning losses (TRAINING §2.1, §2.3). Pure functions on arrays."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def dilate(mask: Array, size: int) -> Array:
  """Max-pool dilation of a [B,H,W,1] mask with a size×size window (reflect padding is equivalent for max)."""
  if size <= 1:
    return mask
  return jax.lax.reduce_window(mask, -jnp.inf, jax.lax.max, (1, size, size, 1), (1, 1, 1, 1), "SAME")


def masked_l1(pred: Array, target: Array, mask: Array, *, unmasked_weight: float = 0.2,
              clamp_percentile: float = 80.0, clamp_min: float = 0.5) -> Array:
  """`masked_error_loss`: per-pixel |pred−gt| summed over channels, ×1 inside `mask` / ×unmasked_weight outside,
  clamped to [0, max(clamp_min, 80th percentile)] (the percentile of the weighted errors, taken without gradient,
  so clamped outlier pixels get zero gradient); the mean over pixels and batch."""
  if pred.shape != target.shape:
    raise ValueError(f"pred {pred.shape} and target {target.shape} differ")
  err = jnp.sum(jnp.abs(pred - target), axis=-1, keepdims=True)
  w = mask + unmasked_weight * (1.0 - mask)
  err = err * w
  hi = jnp.maximum(clamp_min, jnp.percentile(jax.lax.stop_gradient(err), clamp_percentile))
  return jnp.mean(jnp.clip(err, 0.0, hi))


def opacity_entropy(weights: Array) -> Array:
  """Mean binary entropy (log2) of the accumulated opacity, clamped to [1e-5, 1−1e-5]."""
  a = jnp.clip(weights, 1e-5, 1 - 1e-5)
  return jnp.mean(-a * jnp.log2(a) - (1 - a) * jnp.log2(1 - a))


def opacity_l1(weights: Array, head_mask: Array) -> Array:
  """The official `weights_l1` (a squared error): mean((α−0)²) over non-head + mean((α−1)²) over head pixels."""
  a = jnp.clip(weights, 1e-5, 1 - 1e-5)
  head = head_mask > 0.5
  n_head = jnp.maximum(jnp.sum(head), 1)
  n_bg = jnp.maximum(jnp.sum(~head), 1)
  return jnp.sum(jnp.where(head, 0.0, a ** 2)) / n_bg + jnp.sum(jnp.where(head, (a - 1) ** 2, 0.0)) / n_head


def density_reg_l1(sigma_fn: Callable[[Array], Array], key: Array, batch: int, n_points: int = 1000,
                   perturb_std: float = 5e-3) -> Array:
  """L1 between σ at points uniform in [−0.5,0.5]³ and at copies perturbed by N(0, 5e-3²) (§2.1.6).

  sigma_fn: points [B,M,3] -> σ [B,M,1]."""
  k1, k2 = jax.random.split(key)
  pts = jax.random.uniform(k1, (batch, n_points, 3), jnp.float32, -0.5, 0.5)
  pert = pts + perturb_std * jax.random.normal(k2, pts.shape, jnp.float32)
  s = sigma_fn(jnp.concatenate([pts, pert], axis=1))
  return jnp.mean(jnp.abs(s[:, :n_points] - s[:, n_points:]))


def adv_g_loss(fake_logits: Array) -> Array:
  """Non-saturating G loss softplus(−D(fake))."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def adv_d_loss(real_logits: Array, fake_logits: Array) -> tuple[Array, Array]:
  """(softplus(−D(real)), softplus(D(fake))) means."""
  return jnp.mean(jax.nn.softplus(-real_logits)), jnp.mean(jax.nn.softplus(fake_logits))


def r1_penalty(d_fn: Callable[..., Array], *reals: Array) -> Array:
  """Batch mean of (Σ‖∇_x D‖² over every real input)/2 (§2.1.5; multiply by γ·interval = 80 outside)."""
  def total(*xs):
    return jnp.sum(d_fn(*xs))
  grads = jax.grad(total, argnums=tuple(range(len(reals))))(*reals)
  sq = sum(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim))) for g in grads)
  return jnp.mean(sq) / 2


def update_lambda(lam: Array, loss: Array, target: float, *, lr: float = 0.01, max_value: float = 2.0) -> Array:
  """Auto-tuned regulariser weight: λ ← clip(λ + lr·(log10 loss − log10 target), 0, max); target 0 → λ = 0."""
  if target <= 0:
    return jnp.zeros_like(lam)
  new = lam + lr * (jnp.log10(jnp.maximum(jax.lax.stop_gradient(loss), 1e-12)) - jnp.log10(target))
  return jnp.clip(new, 0.0, max_value)
