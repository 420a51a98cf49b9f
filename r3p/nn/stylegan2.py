"""StyleGAN2 synthesis layers (EG3D's `networks_stylegan2.py` / `superresolution.py`) in Flax NNX, NHWC.

Torch-named: every attribute mirrors the official `state_dict` key (`conv0.weight`, `conv0.affine.weight`,
`conv0.resample_filter`, `torgb.bias`, ...). Weights are raw (the runtime gains are applied in the forward, as in
the official code). Buffers (`resample_filter`, `noise_const`) are `Buffer` variables, a `nnx.BatchStat`
subclass, so `r3p.convert.torch_to_nnx.load_state_dict` fills them like any other key.

Numerics (MODEL.md §3.2), for w of shape [B, w_dim]:
  FullyConnectedLayer   y = x @ (W * lr_mul/sqrt(in)) + b (* lr_mul if lr_mul != 1)
  SynthesisLayer        s = affine(w); W' = W * s (per sample, over input channels); demodulate
                        W' *= rsqrt(sum_{kh,kw,I} W'^2 + 1e-8); conv (up=2: transposed conv + 4x4 FIR);
                        (+ noise); + b; leaky_relu(0.2); * sqrt(2)
  ToRGBLayer            s = affine(w) / sqrt(in * k^2); W' = W * s (no demodulation); conv; + b
Modulation and demodulation statistics are always computed in float32; with `dtype=bfloat16` only the
convolutions run in bf16.

Modulated convolution, `fused_modconv`:
  True (default, the official eval path): per-sample modulated (and demodulated) kernels, one convolution per
    sample (torch runs them as one grouped convolution; here a `lax.map`, since XLA:CPU grouped convolutions are
    ~5x slower). The effective kernel is rounded exactly as torch rounds it: the parity-friendly choice.
  False: the weights stay shared; activations are scaled by s before and by the demodulation coefficient after
    the convolution (torch's training path). Same maths, different float rounding (~1e-7 relative); better for
    large batches on accelerators where grouped convolutions are slow.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.nn.layers import default_precision, param
from r3p.nn.numerics import tree_sum

Array = jax.Array

_LRELU_SLOPE = 0.2
_LRELU_GAIN = math.sqrt(2.0)  # bias_act's def_gain for 'lrelu'


class Buffer(nnx.BatchStat):
  """A torch buffer (`register_buffer`): loaded from the state dict, never trained."""


def setup_filter(taps=(1, 3, 3, 1)) -> np.ndarray:
  """upfirdn2d.setup_filter for a short 1-D filter: the normalised outer product (non-separable 2-D, float32)."""
  f = np.asarray(taps, np.float32)
  f = np.outer(f, f)
  return (f / f.sum()).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# upfirdn2d


def _fir2d_valid(x: Array, f: Array) -> Array:
  """Depthwise 'valid' 2-D convolution (true convolution: the filter is flipped) of NHWC x with a 2-D filter.

  Written as a sum of shifted slices: XLA:CPU runs depthwise convolutions ~20x slower than this.
  """
  fh, fw = f.shape
  oh, ow = x.shape[1] - fh + 1, x.shape[2] - fw + 1
  acc = None
  for i in range(fh):
    for j in range(fw):
      t = x[:, i:i + oh, j:j + ow, :] * f[fh - 1 - i, fw - 1 - j]
      acc = t if acc is None else acc + t
  return acc


def upfirdn2d(x: Array, f: Array, *, up: int = 1, down: int = 1, padding=(0, 0, 0, 0), gain: float = 1.0,
              flip_filter: bool = False) -> Array:
  """upfirdn2d on NHWC: zero-insertion upsampling, pad (or crop), FIR filter, downsampling by decimation.

  padding = (x0, x1, y0, y1) as in the official code (x = width). The 2-D filter is multiplied by gain
  (gain ** (ndim/2) with ndim = 2) and used as a true convolution unless flip_filter.
  """
  if x.ndim != 4:
    raise ValueError(f"upfirdn2d expects NHWC, got shape {x.shape}")
  px0, px1, py0, py1 = padding
  if up > 1:
    # Zero insertion: each sample followed by (up-1) zeros, along H and W (the official reshape+pad).
    cfg = [(0, 0, 0), (0, up - 1, up - 1), (0, up - 1, up - 1), (0, 0, 0)]
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), cfg)
  # Negative padding crops (lax.pad supports it).
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (py0, py1, 0), (px0, px1, 0), (0, 0, 0)])
  f = jnp.asarray(f, jnp.float32) * gain
  if flip_filter:
    f = f[::-1, ::-1]
  x = _fir2d_valid(x, f.astype(x.dtype))
  if down > 1:
    x = x[:, ::down, ::down, :]
  return x


def upsample2d(x: Array, f: Array, up: int = 2) -> Array:
  """upfirdn2d.upsample2d: ×up, padding ((fw+up-1)//2, (fw-up)//2) per axis, gain up**2."""
  fw = f.shape[-1]
  p0, p1 = (fw + up - 1) // 2, (fw - up) // 2
  return upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up ** 2)


def downsample2d(x: Array, f: Array, down: int = 2) -> Array:
  """upfirdn2d.downsample2d: padding ((fw-down+1)//2, (fw-down)//2) per axis, gain 1, decimation by `down`."""
  fw = f.shape[-1]
  p0, p1 = (fw - down + 1) // 2, (fw - down) // 2
  return upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1))


# ----------------------------------------------------------------------------------------------------------------
# Modulated convolution


def _conv(x: Array, w: Array, *, groups: int, up: int, precision) -> Array:
  """Same-size k×k convolution (correlation, torch conv2d) or, with up=2, the official up path before the FIR:
  `conv_transpose2d(stride 2, padding 0)` with the (unflipped) weight transposed to [I, O], padded by one more
  pixel on every side (the padding the following FIR needs). Output: [B, 2H+3, 2W+3, O] for up=2."""
  kh, kw = w.shape[0], w.shape[1]
  dn = ("NHWC", "HWIO", "NHWC")
  if up == 1:
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((kh // 2, kh // 2), (kw // 2, kw // 2)),
                                        dimension_numbers=dn, feature_group_count=groups, precision=precision)
  # conv_transpose2d(x, W^T, stride=up) == correlation of the zero-inserted input (lhs_dilation), padded by k-1,
  # with the spatially flipped kernel. One extra zero row/column on each side gives the FIR's padding of 1
  # (rows computed only from padding are exact zeros).
  if up == 2 and kh == 3 and kw == 3:
    return _conv_up2_polyphase(x, w[::-1, ::-1], groups=groups, precision=precision)
  return jax.lax.conv_general_dilated(x, w[::-1, ::-1], (1, 1), ((kh, kh), (kw, kw)), lhs_dilation=(up, up),
                                      dimension_numbers=dn, feature_group_count=groups, precision=precision)


def _conv_up2_polyphase(x: Array, wf: Array, *, groups: int, precision) -> Array:
  """The up=2 path of `_conv` for a 3×3 flipped kernel `wf`, split into its 4 output phases (a speed-up: the
  zero-inserted form spends time on the inserted zeros; same products, summed without the zero terms).

  Along one axis, output o of the dilated correlation is Σ_k wf[k]·x_up[o+k−3] with x_up[2p] = x[p]: even
  o = 2m takes only k = 1 (x[m−1]); odd o = 2m+1 takes k = 0, 2 (x[m−1], x[m]). With x padded by one on each
  side, each phase is a small VALID correlation: even phases have H+2 outputs, odd ones H+1; the interleave
  gives 2H+3 (the last, odd, slot is dropped).
  """
  b, h, w_, _ = x.shape
  dn = ("NHWC", "HWIO", "NHWC")
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  odd = np.array([0, 2])

  def corr(k):
    return jax.lax.conv_general_dilated(xp, k, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=groups,
                                        precision=precision)

  ee = corr(wf[1:2, 1:2])          # [B, H+2, W+2, O]
  eo = corr(wf[1:2][:, odd])       # [B, H+2, W+1, O]
  oe = corr(wf[odd][:, 1:2])       # [B, H+1, W+2, O]
  oo = corr(wf[odd][:, odd])       # [B, H+1, W+1, O]
  pad_w = ((0, 0), (0, 0), (0, 1), (0, 0))
  pad_h = ((0, 0), (0, 1), (0, 0), (0, 0))
  row_e = jnp.stack([ee, jnp.pad(eo, pad_w)], axis=3)                        # [B, H+2, W+2, 2, O]
  row_o = jnp.stack([jnp.pad(oe, pad_h), jnp.pad(oo, ((0, 0), (0, 1), (0, 1), (0, 0)))], axis=3)
  y = jnp.stack([row_e, row_o], axis=2).reshape(b, 2 * h + 4, 2 * w_ + 4, -1)
  return y[:, :2 * h + 3, :2 * w_ + 3]


def modulated_conv2d(x: Array, weight: Array, styles: Array, *, demodulate: bool = True, up: int = 1,
                     resample_filter: Array | None = None, fused_modconv: bool = True, noise: Array | None = None,
                     dtype=jnp.float32, precision=None) -> Array:
  """Official `modulated_conv2d` (padding k//2, flip_weight as the official layers use it) on NHWC.

  x: [B, H, W, I]; weight: [kh, kw, I, O] (raw, fp32); styles: [B, I] or [1, I] (fp32). Styles shared by the
  whole batch ([1, I]: the SR's official ws = ones) give one kernel and one batched convolution, which also keeps
  the op partitionable when the batch is sharded.
  up=2 requires `resample_filter` (4×4): transposed conv then upfirdn2d(pad 1, gain 4) → [B, 2H, 2W, O].
  noise: broadcastable to [B, H', W', 1], added after the convolution (fp32).
  Returns [B, H', W', O] in `dtype`.
  """
  if x.ndim != 4 or weight.ndim != 4:
    raise ValueError(f"modulated_conv2d: x must be NHWC and weight HWIO, got {x.shape} and {weight.shape}")
  b, _, _, cin = x.shape
  kh, kw, wi, co = weight.shape
  if wi != cin or styles.shape not in ((b, cin), (1, cin)):
    raise ValueError(f"modulated_conv2d: x {x.shape}, weight {weight.shape}, styles {styles.shape} do not match")
  if up not in (1, 2):
    raise ValueError(f"modulated_conv2d: up={up} is not supported (1 or 2)")
  precision = precision or default_precision(dtype)
  weight = weight.astype(jnp.float32)
  styles = styles.astype(jnp.float32)
  w = weight[None] * styles[:, None, None, :, None]  # [B, kh, kw, I, O]
  dcoefs = None
  if demodulate:
    dcoefs = jax.lax.rsqrt(tree_sum(jnp.square(w), (1, 2, 3)) + 1e-8)  # [B, O]

  if fused_modconv:
    if demodulate:
      w = w * dcoefs[:, None, None, None, :]
    if w.shape[0] == 1:  # one kernel for every sample (b == 1 or styles shared)
      y = _conv(x.astype(dtype), w[0].astype(dtype), groups=1, up=up, precision=precision)
    else:
      # One convolution per sample with its own kernel (what torch's grouped convolution computes). A loop
      # (lax.map) rather than a grouped convolution: XLA:CPU runs `feature_group_count=B` ~5x slower.
      y = jax.lax.map(lambda xw: _conv(xw[0][None].astype(dtype), xw[1].astype(dtype), groups=1, up=up,
                                       precision=precision)[0], (x, w))
  else:
    xs = (x.astype(jnp.float32) * styles[:, None, None, :]).astype(dtype)
    y = _conv(xs, weight.astype(dtype), groups=1, up=up, precision=precision)

  if up > 1:
    if resample_filter is None:
      raise ValueError("modulated_conv2d: up > 1 needs resample_filter")
    y = upfirdn2d(y, resample_filter, gain=up ** 2)  # the padding is already in y (see _conv)
  y = y.astype(jnp.float32)
  if not fused_modconv and demodulate:
    y = y * dcoefs[:, None, None, :]
  if noise is not None:
    y = y + noise.astype(jnp.float32)
  return y.astype(dtype)


# ----------------------------------------------------------------------------------------------------------------
# Layers


class FullyConnectedLayer(nnx.Module):
  """EG3D FullyConnectedLayer, linear activation. weight: [in, out] (torch [out, in]), raw (runtime gain)."""

  def __init__(self, in_features: int, out_features: int, *, bias: bool = True, lr_multiplier: float = 1.0,
               bias_init: float = 0.0, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.in_features, self.out_features = in_features, out_features
    self.weight_gain = float(lr_multiplier / np.sqrt(in_features))
    self.bias_gain = float(lr_multiplier)
    w = jax.random.normal(rngs.params(), (in_features, out_features), param_dtype) / lr_multiplier
    self.weight = param(w, "linear")
    self.bias = param(jnp.full((out_features,), bias_init, param_dtype), "none") if bias else None

  def __call__(self, x: Array) -> Array:
    """Always float32 (it produces modulation styles)."""
    w = self.weight[...].astype(jnp.float32) * np.float32(self.weight_gain)
    y = jnp.matmul(x.astype(jnp.float32), w, precision=jax.lax.Precision.HIGHEST)
    if self.bias is not None:
      b = self.bias[...].astype(jnp.float32)
      if self.bias_gain != 1:
        b = b * np.float32(self.bias_gain)
      y = y + b
    return y


class SynthesisLayer(nnx.Module):
  """Modulated k×k conv (optionally ×2 upsampling) + bias + lrelu·√2. Torch keys: affine.{weight,bias}, weight
  [O,I,k,k], bias, noise_const [res,res], noise_strength [], resample_filter [4,4]."""

  def __init__(self, in_channels: int, out_channels: int, *, w_dim: int, resolution: int, kernel_size: int = 3,
               up: int = 1, use_noise: bool = True, resample_filter=(1, 3, 3, 1), dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.in_channels, self.out_channels = in_channels, out_channels
    self.resolution, self.up, self.use_noise = resolution, up, use_noise
    self.dtype = dtype
    self.resample_filter = Buffer(jnp.asarray(setup_filter(resample_filter)), torch_layout="none")
    self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0, param_dtype=param_dtype, rngs=rngs)
    self.weight = param(jax.random.normal(rngs.params(), (kernel_size, kernel_size, in_channels, out_channels),
                                          param_dtype), "conv")
    if use_noise:
      self.noise_const = Buffer(jax.random.normal(rngs.params(), (resolution, resolution), jnp.float32),
                                torch_layout="none")
      self.noise_strength = param(jnp.zeros((), param_dtype), "none")
    self.bias = param(jnp.zeros((out_channels,), param_dtype), "none")

  def __call__(self, x: Array, w: Array, *, noise_mode: str = "none", fused_modconv: bool = True,
               gain: float = 1.0, noise_key: Array | None = None) -> Array:
    """x: [B, res/up, res/up, I]; w: [B, w_dim]. noise_mode 'none' (the official inference setting), 'const',
    or 'random' (needs `noise_key`). Returns [B, res, res, O] in `dtype`."""
    in_res = self.resolution // self.up
    if x.shape[1:] != (in_res, in_res, self.in_channels):
      raise ValueError(f"SynthesisLayer: expected [B,{in_res},{in_res},{self.in_channels}], got {x.shape}")
    styles = self.affine(w)
    noise = None
    if self.use_noise and noise_mode == "random":
      if noise_key is None:
        raise ValueError("SynthesisLayer: noise_mode='random' needs noise_key")
      noise = jax.random.normal(noise_key, (x.shape[0], self.resolution, self.resolution, 1), jnp.float32)
      noise = noise * self.noise_strength[...].astype(jnp.float32)
    elif self.use_noise and noise_mode == "const":
      noise = (self.noise_const[...] * self.noise_strength[...].astype(jnp.float32))[None, :, :, None]
    elif noise_mode not in ("none", "const", "random"):
      raise ValueError(f"SynthesisLayer: unknown noise_mode {noise_mode!r}")
    y = modulated_conv2d(x, self.weight[...], styles, demodulate=True, up=self.up,
                         resample_filter=self.resample_filter[...], fused_modconv=fused_modconv, noise=noise,
                         dtype=self.dtype)
    # bias_act(act='lrelu', gain=sqrt(2)*gain, clamp=None), in float32.
    y = y.astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    y = jnp.where(y >= 0, y, y * np.float32(_LRELU_SLOPE))
    y = y * np.float32(_LRELU_GAIN * gain)
    return y.astype(self.dtype)


class ToRGBLayer(nnx.Module):
  """Modulated 1×1 conv without demodulation + bias. Torch keys: affine.{weight,bias}, weight [O,I,1,1], bias."""

  def __init__(self, in_channels: int, out_channels: int, *, w_dim: int, kernel_size: int = 1, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.in_channels, self.out_channels, self.dtype = in_channels, out_channels, dtype
    self.weight_gain = float(1 / np.sqrt(in_channels * kernel_size ** 2))
    self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0, param_dtype=param_dtype, rngs=rngs)
    self.weight = param(jax.random.normal(rngs.params(), (kernel_size, kernel_size, in_channels, out_channels),
                                          param_dtype), "conv")
    self.bias = param(jnp.zeros((out_channels,), param_dtype), "none")

  def __call__(self, x: Array, w: Array, *, fused_modconv: bool = True) -> Array:
    """x: [B, H, W, I]; w: [B, w_dim] → [B, H, W, O], float32 (the skip image is kept in float32)."""
    styles = self.affine(w) * np.float32(self.weight_gain)
    y = modulated_conv2d(x, self.weight[...], styles, demodulate=False, fused_modconv=fused_modconv,
                         dtype=self.dtype)
    return y.astype(jnp.float32) + self.bias[...].astype(jnp.float32)


class SynthesisBlock(nnx.Module):
  """StyleGAN2 'skip' SynthesisBlock with in_channels > 0: conv0 (×2 up), conv1, torgb; the incoming image is
  upsampled with `upsample2d(img, resample_filter)` and torgb(x) is added. Consumes 3 w vectors (ws [B,3,w_dim]).

  use_up=False gives EG3D's `SynthesisBlockNoUp` (superresolution.py): conv0 without upsampling, and the image
  is *not* upsampled (the official quirk, MODEL.md §6.7).
  """

  def __init__(self, in_channels: int, out_channels: int, *, w_dim: int, resolution: int, img_channels: int = 3,
               use_up: bool = True, resample_filter=(1, 3, 3, 1), dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if in_channels <= 0:
      raise ValueError("SynthesisBlock: in_channels == 0 (const input) is not used by r3p")
    self.in_channels, self.out_channels, self.resolution = in_channels, out_channels, resolution
    self.use_up, self.dtype = use_up, dtype
    self.resample_filter = Buffer(jnp.asarray(setup_filter(resample_filter)), torch_layout="none")
    kw = dict(w_dim=w_dim, resolution=resolution, resample_filter=resample_filter, dtype=dtype,
              param_dtype=param_dtype, rngs=rngs)
    self.conv0 = SynthesisLayer(in_channels, out_channels, up=2 if use_up else 1, **kw)
    self.conv1 = SynthesisLayer(out_channels, out_channels, **kw)
    self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, dtype=dtype, param_dtype=param_dtype,
                            rngs=rngs)

  def __call__(self, x: Array, img: Array | None, ws: Array, *, noise_mode: str = "none",
               fused_modconv: bool = True, noise_key: Array | None = None) -> tuple[Array, Array]:
    """x: [B, r, r, I] (r = resolution/2 with up, else resolution); img: [B, r, r, 3] float32 or None;
    ws: [B, 3, w_dim]. Returns (x [B, res, res, O] in dtype, img [B, res, res, 3] float32)."""
    if ws.ndim != 3 or ws.shape[1] != 3:
      raise ValueError(f"SynthesisBlock: ws must be [B, 3, w_dim], got {ws.shape}")
    k0 = k1 = None
    if noise_key is not None:
      k0, k1 = jax.random.split(noise_key)
    x = self.conv0(x, ws[:, 0], noise_mode=noise_mode, fused_modconv=fused_modconv, noise_key=k0)
    x = self.conv1(x, ws[:, 1], noise_mode=noise_mode, fused_modconv=fused_modconv, noise_key=k1)
    if img is not None and self.use_up:
      img = upsample2d(img.astype(jnp.float32), self.resample_filter[...])
    y = self.torgb(x, ws[:, 2], fused_modconv=fused_modconv)
    img = img.astype(jnp.float32) + y if img is not None else y
    return x, img


def SynthesisBlockNoUp(in_channels: int, out_channels: int, **kwargs) -> SynthesisBlock:
  """EG3D `SynthesisBlockNoUp`: a SynthesisBlock whose conv0 does not upsample and whose image is not upsampled."""
  return SynthesisBlock(in_channels, out_channels, use_up=False, **kwargs)
