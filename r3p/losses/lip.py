"""Lip-crop losses (TRAINING §2.1.3): a square box around the 68-point lips (48–59), cropped from prediction and
target; L1 mean ("lip_mae") and the perceptual loss on the crop ("lip_lpips", crop resized to 512 by
`perceptual_loss`).

Redesign for jit: the official crop is an integer box of per-sample size (so shapes vary); here each box is
resampled (bilinear, pixel centres) to a fixed `crop_size`², so the L1 mean over a crop is the mean over the same
box up to resampling. The box itself follows `get_lip_rect`: centre = middle of the lip extent, half-size
1.2·max(half-width, half-height), then clipped to the image (the clipped box may be non-square at the border).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
LIPS = slice(48, 60)


def lip_boxes(lm_px: Array, height: int, width: int) -> Array:
  """lm_px [B,68,≥2] (x = column, y = row, in pixels) -> boxes [B,4] = (x0, x1, y0, y1) in pixels."""
  lips = lm_px[:, LIPS, :2]
  lo, hi = jnp.min(lips, axis=1), jnp.max(lips, axis=1)
  c = (lo + hi) / 2
  half = 1.2 * jnp.max(hi - c, axis=-1)  # square: the larger half-extent
  x0 = jnp.clip(c[:, 0] - half, 0, width - 1)
  y0 = jnp.clip(c[:, 1] - half, 0, height - 1)
  x1 = jnp.clip(c[:, 0] + half, x0 + 1, width)
  y1 = jnp.clip(c[:, 1] + half, y0 + 1, height)
  return jax.lax.stop_gradient(jnp.stack([x0, x1, y0, y1], -1))


def crop(img: Array, boxes: Array, crop_size: int) -> Array:
  """Bilinear resample of boxes [B,4] (x0,x1,y0,y1 pixels) from img [B,H,W,C] -> [B,crop_size,crop_size,C]."""
  t = (jnp.arange(crop_size, dtype=jnp.float32) + 0.5) / crop_size

  def one(im, box):
    xs = box[0] + t * (box[1] - box[0]) - 0.5  # pixel-centre coordinates
    ys = box[2] + t * (box[3] - box[2]) - 0.5
    yy, xx = jnp.meshgrid(ys, xs, indexing="ij")
    return jnp.stack([jax.scipy.ndimage.map_coordinates(im[..., c], [yy, xx], order=1, mode="nearest")
                      for c in range(im.shape[-1])], -1)
  return jax.vmap(one)(img, boxes)


def landmarks_to_pixels(lm: Array, height: int, width: int) -> Array:
  """[-1,1] image coordinates (x right, y down) -> pixels (the synthetic data's landmark convention)."""
  return jnp.stack([(lm[..., 0] + 1) * width / 2, (lm[..., 1] + 1) * height / 2], -1)


def lip_mae(pred: Array, target: Array, boxes: Array, crop_size: int) -> tuple[Array, Array, Array]:
  """(L1 mean over the crops, pred crops, target crops) — the crops feed the lip perceptual loss."""
  p, t = crop(pred, boxes, crop_size), crop(target, boxes, crop_size)
  return jnp.mean(jnp.abs(p - t)), p, t
