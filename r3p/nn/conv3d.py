"""Torch-named 3-D convolution and the facev2v building blocks (`facev2v_warp/layers.py` of the reference).

Channels-last everywhere: 2-D blocks take NHWC, 3-D blocks NDHWC. Attribute names mirror the torch modules, so
an NNX path joined by "." is the torch state_dict key:

  ConvBlock(pattern)  .layers.<i>   one entry per pattern letter: C = Conv2d/Conv3d, N = BatchNorm (eval: running
                                    stats, eps 1e-5; SyncBatchNorm in the reference), A = ReLU or LeakyReLU(0.2)
  DownBlock           .layers.0 = ConvBlock("CNA", k3 p1), .layers.1 = AvgPool (2×2, or (1,2,2) in 3-D)
  UpBlock             .layers.0 = nearest ×2 upsample (H, W only), .layers.1 = ConvBlock("CNA", k3 p1)
  ResBlock            x + layers.1(layers.0(x)), both ConvBlock("NAC", k3 p1)

Spectral-norm convolutions (`use_weight_norm=True` in the reference) are plain convolutions here: the effective
weight is folded on the torch dict (`r3p.convert.torch_to_nnx.fold_spectral_norm`) before loading.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.nn.layers import BatchNorm, Conv2d, LeakyReLU, ReLU, Sigmoid, default_precision, param  # noqa: F401

Array = jax.Array

BatchNorm3d = BatchNorm  # channels-last BatchNorm normalises the last axis whatever the rank


def _triple(v) -> tuple[int, int, int]:
  return tuple(v) if isinstance(v, (tuple, list)) else (v,) * 3


class Conv3d(nnx.Module):
  """torch.nn.Conv3d on NDHWC input. weight: [kd, kh, kw, in, out] (torch [out, in, kd, kh, kw]), layout 'conv'."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size, *, stride=1, padding=0, bias: bool = True,
               dtype=jnp.float32, param_dtype=jnp.float32, precision=None, rngs: nnx.Rngs):
    kd, kh, kw = _triple(kernel_size)
    self.stride = _triple(stride)
    self.padding = tuple((p, p) for p in _triple(padding))
    self.dtype, self.precision = dtype, precision
    bound = 1.0 / np.sqrt(in_channels * kd * kh * kw)  # torch's default init bound
    self.weight = param(jax.random.uniform(rngs.params(), (kd, kh, kw, in_channels, out_channels), param_dtype,
                                           -bound, bound), "conv", (None, None, None, "embed", "mlp"))
    self.bias = param(jax.random.uniform(rngs.params(), (out_channels,), param_dtype, -bound, bound), "none",
                      ("mlp",)) if bias else None

  def __call__(self, x: Array, depth_constant: Array | None = None) -> Array:
    """x: [B,D,H,W,I] -> [B,D',H',W',O].

    depth_constant: optional [B,H,W,Ic], extra input channels (the LAST Ic of `in_channels`) that are the same at
    every depth, i.e. the call equals `self(concat([x, broadcast(depth_constant over D)], -1))`. Their share of
    the convolution is done once in 2-D: a depth-constant input only sees the sum of the depth taps that fall
    inside the (zero-padded) volume, so each output depth gets a 2-D convolution with its own tap-summed kernel.
    Saves (Ic/I)·(kd−1)/kd of the FLOPs; same sum as the concatenated form up to float rounding (~1e-7 rel).
    """
    if x.ndim != 5:
      raise ValueError(f"Conv3d expects NDHWC input, got shape {x.shape}")
    if depth_constant is not None:
      return self._call_depth_constant(x, depth_constant)
    x = x.astype(self.dtype)
    w = self.weight[...].astype(self.dtype)
    return self._conv(x, w, bias=True)

  def _call_depth_constant(self, x: Array, c: Array) -> Array:
    if c.ndim != 4 or c.shape[0] != x.shape[0] or c.shape[1:3] != x.shape[2:4]:
      raise ValueError(f"Conv3d: depth_constant must be [B,H,W,C] matching x {x.shape}, got {c.shape}")
    w_all = self.weight[...]
    ci = x.shape[-1]
    if ci + c.shape[-1] != w_all.shape[3]:
      raise ValueError(f"Conv3d: {ci} + {c.shape[-1]} input channels, weight expects {w_all.shape[3]}")
    if self.stride != (1, 1, 1):
      raise ValueError("Conv3d: depth_constant needs stride 1")
    y = self._conv(x.astype(self.dtype), w_all[:, :, :, :ci].astype(self.dtype), bias=True)
    kd = w_all.shape[0]
    d_in, d_out = x.shape[1], y.shape[1]
    p0 = self.padding[0][0]
    # tap k of output depth o reads input depth o + k − p0; it contributes only when that lies inside [0, D).
    taps = np.array([[1.0 if 0 <= o + k - p0 < d_in else 0.0 for k in range(kd)] for o in range(d_out)],
                    np.float32)
    w_c = w_all[:, :, :, ci:].astype(jnp.float32)                      # [kd, kh, kw, Ic, O]
    w_eff = jnp.einsum("dk,khwio->hwido", jnp.asarray(taps), w_c,
                       precision=jax.lax.Precision.HIGHEST)              # [kh, kw, Ic, D', O]
    kh, kw, ic, _, co = w_eff.shape
    yc = jax.lax.conv_general_dilated(
        c.astype(self.dtype), w_eff.reshape(kh, kw, ic, d_out * co).astype(self.dtype), self.stride[1:],
        self.padding[1:], dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=self.precision or default_precision(self.dtype))      # [B, H', W', D'·O]
    b, h2, w2, _ = yc.shape
    yc = yc.reshape(b, h2, w2, d_out, co).transpose(0, 3, 1, 2, 4)
    return y + yc

  def _conv(self, x: Array, w: Array, *, bias: bool) -> Array:
    prec = self.precision or default_precision(self.dtype)
    kd = w.shape[0]
    if kd > 1 and self.stride[0] == 1:
      # XLA:CPU runs true 3-D convolutions slowly (~4x slower than this). Depth taps become channels instead:
      # stack the kd depth-shifted copies along C and run one 2-D convolution over (H, W) with the depth folded
      # into the batch; the weight [kd,kh,kw,I,O] is read as [kh,kw,kd*I,O]. Same sum, other order.
      b, d, h, wd, c = x.shape
      (p0, p1) = self.padding[0]
      xp = jnp.pad(x, ((0, 0), (p0, p1), (0, 0), (0, 0), (0, 0)))
      d_out = d + p0 + p1 - kd + 1
      cols = jnp.concatenate([xp[:, k:k + d_out] for k in range(kd)], axis=-1)
      cols = cols.reshape(b * d_out, h, wd, kd * c)
      w2 = jnp.transpose(w, (1, 2, 0, 3, 4)).reshape(w.shape[1], w.shape[2], kd * c, w.shape[4])
      y = jax.lax.conv_general_dilated(cols, w2, window_strides=self.stride[1:], padding=self.padding[1:],
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=prec)
      y = y.reshape((b, d_out) + y.shape[1:])
    else:
      y = jax.lax.conv_general_dilated(x, w, window_strides=self.stride, padding=self.padding,
                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), precision=prec)
    if bias and self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class AvgPool(nnx.Module):
  """AvgPool2d(2) / AvgPool3d((1,2,2)): mean of each 2×2 block of (H, W) (channels-last, rank 4 or 5)."""

  def __call__(self, x: Array) -> Array:
    *lead, h, w, c = x.shape
    if h % 2 or w % 2:
      raise ValueError(f"AvgPool: H and W must be even, got {h}x{w}")
    x = x.reshape(*lead, h // 2, 2, w // 2, 2, c)
    # torch sums the window row by row, then divides by 4
    s = x[..., 0, :, 0, :] + x[..., 0, :, 1, :] + x[..., 1, :, 0, :] + x[..., 1, :, 1, :]
    return s / jnp.asarray(4, x.dtype)


class UpsampleNearest(nnx.Module):
  """nn.Upsample(scale_factor=2 or (1,2,2), mode='nearest') on (H, W) of a channels-last tensor."""

  def __call__(self, x: Array) -> Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)


class ConvBlock(nnx.Module):
  """facev2v `ConvBlock2D/3D(pattern, in, out, k, stride, padding)`; `dim` picks Conv2d (NHWC) or Conv3d (NDHWC)."""

  def __init__(self, pattern: str, in_channels: int, out_channels: int, kernel_size: int, stride: int,
               padding: int, *, dim: int, nonlinearity: str = "relu", dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if set(pattern) - set("CNA"):
      raise ValueError(f"ConvBlock pattern must use only C, N, A; got {pattern!r}")
    # BN sits on the conv output when C comes before N, else on the block input (the reference's rule).
    norm_ch = out_channels if pattern.find("C") < pattern.find("N") else in_channels
    conv_cls = {2: Conv2d, 3: Conv3d}[dim]
    mods = []
    for ch in pattern:
      if ch == "C":
        mods.append(conv_cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs))
      elif ch == "N":
        mods.append(BatchNorm(norm_ch, eps=1e-5, dtype=dtype, param_dtype=param_dtype))
      else:
        mods.append(ReLU() if nonlinearity == "relu" else LeakyReLU(0.2))
    self.layers = nnx.List(mods)

  def __call__(self, x: Array) -> Array:
    for m in self.layers:
      x = m(x)
    return x


class DownBlock(nnx.Module):
  """DownBlock2D/3D: ConvBlock CNA k3 p1, then 2×2 average pooling over (H, W)."""

  def __init__(self, in_channels: int, out_channels: int, *, dim: int, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.layers = nnx.List([
        ConvBlock("CNA", in_channels, out_channels, 3, 1, 1, dim=dim, dtype=dtype, param_dtype=param_dtype,
                  rngs=rngs),
        AvgPool()])

  def __call__(self, x: Array) -> Array:
    return self.layers[1](self.layers[0](x))


class UpBlock(nnx.Module):
  """UpBlock2D/3D: nearest ×2 upsampling of (H, W), then ConvBlock CNA k3 p1."""

  def __init__(self, in_channels: int, out_channels: int, *, dim: int, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.layers = nnx.List([
        UpsampleNearest(),
        ConvBlock("CNA", in_channels, out_channels, 3, 1, 1, dim=dim, dtype=dtype, param_dtype=param_dtype,
                  rngs=rngs)])

  def __call__(self, x: Array) -> Array:
    return self.layers[1](self.layers[0](x))


class ResBlock(nnx.Module):
  """ResBlock2D/3D: x + (BN → ReLU → conv3) twice."""

  def __init__(self, channels: int, *, dim: int, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.layers = nnx.List([
        ConvBlock("NAC", channels, channels, 3, 1, 1, dim=dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for _ in range(2)])

  def __call__(self, x: Array) -> Array:
    return x + self.layers[1](self.layers[0](x))


def dilate(x: Array, ksize: int = 7) -> Array:
  """`utils/commons/image_utils.dilate` on NHWC: reflect-pad (k−1)/2 on H, W, then max-pool k×k, stride 1."""
  pad = (ksize - 1) // 2
  x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, ksize, ksize, 1), (1, 1, 1, 1), "VALID")
