"""Bilinear resizing with PyTorch `F.interpolate(mode='bilinear', align_corners=False, antialias=...)` semantics.

NHWC in, NHWC out. The tap indices and weights are computed once on the host, in float32 with the same mixed
float/double promotions as ATen's CPU kernel (`UpSampleKernel.cpp`), so the weights are bit-identical to torch's;
the image is then resampled as two separable 1-D passes, width first, then height (ATen's order), each output
sample accumulated tap by tap in float32 (`out = x0*w0; out += x1*w1; ...`), again ATen's order.

antialias=True (ATen `_upsample_bilinear2d_aa`), per axis with scale = in/out:
  support = scale if scale >= 1 else 1   (the triangle filter is stretched by the downsampling factor)
  center_i = scale * (i + 0.5); xmin = trunc(center - support + 0.5) clamped >= 0;
  xmax = min(trunc(center + support + 0.5), in);
  w_j = max(0, 1 - |(xmin + j - center + 0.5) / max(scale, 1)|), then normalised to sum 1 per output sample.
  Upsampling with antialias=True is plain bilinear except for rounding; a same-size resize is an exact copy.

antialias=False (ATen `upsample_bilinear2d`): source coordinate s = max((i + 0.5) * scale - 0.5, 0),
  i0 = floor(s), i1 = min(i0 + 1, in - 1), weights (1 - l, l) with l = s - i0.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@functools.lru_cache(maxsize=None)
def aa_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Antialiased-bilinear taps of one axis: (indices [out, K] int32, weights [out, K] float32).

  Rows shorter than K are padded with index xmin and weight 0 (adds an exact 0 at the end of the sum).
  """
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)  # area_pixel_compute_scale<float>
  support = f32(1.0 * float(scale)) if scale >= 1.0 else f32(1.0)  # (interp_size * 0.5) * scale, interp_size 2
  invscale = f32(1.0 / float(scale)) if scale >= 1.0 else f32(1.0)
  max_k = int(np.ceil(float(support))) * 2 + 1
  idx = np.zeros((out_size, max_k), np.int32)
  wts = np.zeros((out_size, max_k), np.float32)
  for i in range(out_size):
    center = f32(float(scale) * (i + 0.5))  # float * (int + double) -> double, stored as float
    xmin = max(int(float(f32(center - support)) + 0.5), 0)  # static_cast<int64_t> truncates toward zero
    xsize = min(int(float(f32(center + support)) + 0.5), in_size) - xmin
    xsize = min(max(xsize, 0), max_k)
    ws = []
    total = f32(0.0)
    for j in range(xsize):
      arg = f32((float(f32(f32(j + xmin) - center)) + 0.5) * float(invscale))  # filter takes a float
      a = abs(arg)
      w = f32(1.0) - a if a < 1.0 else f32(0.0)
      ws.append(f32(w))
      total = f32(total + f32(w))
    if total != 0.0:
      ws = [f32(w / total) for w in ws]
    idx[i, :] = xmin
    idx[i, :xsize] = xmin + np.arange(xsize)
    wts[i, :xsize] = ws
  return idx, wts


@functools.lru_cache(maxsize=None)
def linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Plain bilinear taps (align_corners=False): (indices [out, 2], weights [out, 2] float32)."""
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  idx = np.zeros((out_size, 2), np.int32)
  wts = np.zeros((out_size, 2), np.float32)
  for i in range(out_size):
    s = f32(max(float(f32(scale * f32(i + 0.5))) - 0.5, 0.0))  # area_pixel_compute_source_index, clamped at 0
    i0 = min(int(np.floor(s)), in_size - 1)
    i1 = i0 + (1 if i0 < in_size - 1 else 0)
    l1 = f32(s - f32(i0))
    idx[i] = (i0, i1)
    wts[i] = (f32(1.0) - l1, l1)
  return idx, wts


def _resample_axis(x: Array, axis: int, idx: np.ndarray, wts: np.ndarray) -> Array:
  """out[..., i, ...] = sum_j x[..., idx[i, j], ...] * wts[i, j], accumulated in tap order."""
  shape = [1] * x.ndim
  shape[axis] = idx.shape[0]
  out = None
  for j in range(idx.shape[1]):
    if j > 0 and not np.any(wts[:, j]):
      continue  # all-zero trailing taps add exact zeros
    t = jnp.take(x, jnp.asarray(idx[:, j]), axis=axis) * jnp.asarray(wts[:, j], x.dtype).reshape(shape)
    out = t if out is None else out + t
  return out


def resize_bilinear(x: Array, size: tuple[int, int], antialias: bool) -> Array:
  """torch F.interpolate(x, size, mode='bilinear', align_corners=False, antialias=antialias) on NHWC `x`.

  Computes in float32 (bfloat16 inputs are upcast and the result cast back).
  """
  if x.ndim != 4:
    raise ValueError(f"resize_bilinear expects NHWC [B,H,W,C], got shape {x.shape}")
  oh, ow = int(size[0]), int(size[1])
  if (oh, ow) == tuple(x.shape[1:3]):
    return x  # ATen copies the input when the shape does not change (both modes give the identity)
  return _resize(x, (oh, ow), bool(antialias))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _resize(x: Array, size: tuple[int, int], antialias: bool) -> Array:
  oh, ow = size
  _, h, w, _ = x.shape
  taps = aa_taps if antialias else linear_taps
  y = x.astype(jnp.float32)
  if antialias:
    # Separable passes, width then height, skipping an axis whose size does not change (ATen's order).
    if ow != w:
      y = _resample_axis(y, 2, *taps(w, ow))
    if oh != h:
      y = _resample_axis(y, 1, *taps(h, oh))
  else:
    # ATen's 2-tap kernel: out = (x[y0,x0]*wx0 + x[y0,x1]*wx1)*wy0 + (x[y1,x0]*wx0 + x[y1,x1]*wx1)*wy1.
    yi, yw = taps(h, oh)
    xi, xw = taps(w, ow)
    rows = [jnp.take(y, jnp.asarray(yi[:, k]), axis=1) for k in range(2)]
    cols = [_resample_axis(r, 2, xi, xw) for r in rows]
    y = (cols[0] * jnp.asarray(yw[:, 0]).reshape(1, -1, 1, 1) + cols[1] * jnp.asarray(yw[:, 1]).reshape(1, -1, 1, 1))
  return y.astype(x.dtype)
