"""Dual-discriminator adversarial terms of the image stages (TRAINING §2.1.4, §2.1.5). Pure functions.

A *D input* is a triple `(img, raw, c)`: img [B,R,R,3] in the D's "SR" slot (R = the D resolution), raw
[B,r,r,3] in its raw slot (resized to R inside the D), c [B,25] the camera of the frame being judged. Stages
hand the trainer `{"real": {name: triple}, "fake": {name: triple}}` (all detached); every entry is one D call
with its own c-noise draw, as the release calls D once per image set (mbstd and the camera std are per call).

Keys: the call for entry i (reals in sorted-name order, then fakes) uses `fold_in(key, i)`; the R1 of a real
entry re-uses its entry's key, so the penalty is taken on the very logits the loss uses (as the release does).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from r3p.losses.basic import adv_g_loss, r1_penalty
from r3p.models.discriminator import camera_noise_std

Array = jax.Array
# fold_in salts of the step key: the G adversarial c-noise draws and the D step's draws (distinct from the
# stage's own `split(key, n)` uses, so adding the D changes no other random draw).
G_ADV_SALT = 0x6AD
D_STEP_SALT = 0xD15C
Triple = tuple[Array, Array, Array]
D_FN = Callable[[Array, Array, Array], Array]   # (img, raw, c) -> logits [B,1]


def noisy_camera(c: Array, key: Array, strength: float) -> Array:
  """c + N(0,1)·std·strength with the per-dimension batch std (`disc_c_noise`; B=1: the released table)."""
  if strength <= 0:
    return c
  return c + jax.random.normal(key, c.shape, c.dtype) * camera_noise_std(c) * strength


def entry_keys(inputs: dict[str, dict[str, Triple]], key: Array) -> dict[str, dict[str, Array]]:
  out, i = {}, 0
  for kind in ("real", "fake"):
    out[kind] = {}
    for name in sorted(inputs.get(kind, {})):
      out[kind][name] = jax.random.fold_in(key, i)
      i += 1
  return out


def d_main_loss(d_fn: D_FN, inputs: dict[str, dict[str, Triple]], key: Array, c_noise: float
                ) -> tuple[Array, dict[str, Array]]:
  """Σ softplus(−D(real)) over the real entries + Σ softplus(D(fake)) over the fake entries (weights 1.0).

  Metrics: `maximize_gt_<name>`, `minimize_fake_<name>` and the mean logits `logits_real_<name>`, `logits_fake_…`."""
  keys = entry_keys(inputs, key)
  terms, total = {}, 0.0
  for name, (img, raw, c) in sorted(inputs.get("real", {}).items()):
    logits = d_fn(img, raw, noisy_camera(c, keys["real"][name], c_noise))
    terms[f"maximize_gt_{name}"] = adv_g_loss(logits)          # softplus(−D(real)), the same form as G's
    terms[f"logits_real_{name}"] = jnp.mean(logits)
    total = total + terms[f"maximize_gt_{name}"]
  for name, (img, raw, c) in sorted(inputs.get("fake", {}).items()):
    logits = d_fn(img, raw, noisy_camera(c, keys["fake"][name], c_noise))
    terms[f"minimize_fake_{name}"] = jnp.mean(jax.nn.softplus(logits))
    terms[f"logits_fake_{name}"] = jnp.mean(logits)
    total = total + terms[f"minimize_fake_{name}"]
  return total, terms


def d_r1_loss(d_fn: D_FN, inputs: dict[str, dict[str, Triple]], key: Array, c_noise: float
              ) -> tuple[Array, dict[str, Array]]:
  """Σ over real entries of the R1 penalty (batch mean of (‖∇_img D‖² + ‖∇_raw D‖²)/2), unweighted
  (the caller multiplies by γ·interval = 80 on the lazy steps). Metrics `r1_gt_<name>`."""
  keys = entry_keys(inputs, key)
  terms, total = {}, 0.0
  for name, (img, raw, c) in sorted(inputs.get("real", {}).items()):
    cn = noisy_camera(c, keys["real"][name], c_noise)
    terms[f"r1_gt_{name}"] = r1_penalty(lambda a, b, cn=cn: d_fn(a, b, cn), img, raw)
    total = total + terms[f"r1_gt_{name}"]
  return total, terms


def g_adv_loss(d_fn: D_FN, fake: Triple, key: Array, c_noise: float) -> Array:
  """Non-saturating G term softplus(−D(fake)) of one generated image set (gradients flow to the fake)."""
  img, raw, c = fake
  return adv_g_loss(d_fn(img, raw, noisy_camera(c, key, c_noise)))
