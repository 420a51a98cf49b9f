"""Torch-named NNX layers, NHWC inside.

Every layer keeps the attribute names of its PyTorch counterpart (`weight`, `bias`, `running_mean`, ...) so that
an NNX state path joined with "." is the torch `state_dict` key. Parameters are stored in JAX layouts
(conv HWIO, linear [in, out]); each `nnx.Param` carries a `torch_layout` tag that
`r3p.convert.torch_to_nnx` uses to convert torch tensors, the one place where layouts change.

Precision: parity needs float32 matmuls/convolutions at full precision (`Precision.HIGHEST`; TF32 passes on
GPU are far outside the fixture tolerances). With `dtype=bfloat16` the default precision is used.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from r3p.nn.numerics import tree_mean, tree_sum

Array = jax.Array


def default_precision(dtype) -> jax.lax.Precision:
  """HIGHEST for fp32 compute (exact parity), DEFAULT for reduced-precision compute."""
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT


def _pair(v, n=2) -> tuple[int, ...]:
  return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _uniform(key, shape, bound, dtype):
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def param(value, layout: str, names: Sequence[str | None] | None = None) -> nnx.Param:
  """An nnx.Param tagged with its torch layout and (optionally) logical axis names."""
  meta = {"torch_layout": layout}
  if names is not None:
    # Logical names only: they resolve to mesh axes through the rules table of r3p.parallel when a mesh is set
    # (training/sharded inference); eager_sharding=False keeps plain construction mesh-free.
    meta["out_sharding"] = tuple(names)
    meta["eager_sharding"] = False
  return nnx.Param(value, **meta)


class ReLU(nnx.Module):
  """Stateless torch.nn.ReLU; exists so that `nnx.List` indices match torch `nn.Sequential` indices."""

  def __call__(self, x: Array) -> Array:
    return jax.nn.relu(x)


class LeakyReLU(nnx.Module):
  """Stateless torch.nn.LeakyReLU (default slope 0.01, as `nn.LeakyReLU()`)."""

  def __init__(self, negative_slope: float = 0.01):
    self.negative_slope = negative_slope

  def __call__(self, x: Array) -> Array:
    return jnp.where(x >= 0, x, x * jnp.asarray(self.negative_slope, x.dtype))


class Sigmoid(nnx.Module):
  """Stateless torch.nn.Sigmoid slot."""

  def __call__(self, x: Array) -> Array:
    return jax.nn.sigmoid(x)


class Conv2d(nnx.Module):
  """torch.nn.Conv2d on NHWC input. weight: [kh, kw, in/groups, out] (torch [out, in/groups, kh, kw])."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size, *, stride=1, padding=0, dilation=1,
               groups: int = 1, bias: bool = True, padding_mode: str = "zeros", dtype=jnp.float32,
               param_dtype=jnp.float32, precision=None, rngs: nnx.Rngs):
    kh, kw = _pair(kernel_size)
    self.stride, self.dilation, self.groups = _pair(stride), _pair(dilation), groups
    if isinstance(padding, str):
      self.padding = padding.upper()
    else:
      ph, pw = _pair(padding)
      self.padding = ((ph, ph), (pw, pw))
    self.padding_mode = padding_mode
    self.dtype, self.precision = dtype, precision
    fan_in = in_channels // groups * kh * kw
    bound = 1.0 / np.sqrt(fan_in)  # torch's default kaiming_uniform(a=sqrt(5)) bound
    self.weight = param(_uniform(rngs.params(), (kh, kw, in_channels // groups, out_channels), bound, param_dtype),
                        "conv", (None, None, "embed", "mlp"))
    self.bias = param(_uniform(rngs.params(), (out_channels,), bound, param_dtype), "none", ("mlp",)) if bias else None

  def __call__(self, x: Array) -> Array:
    pad = self.padding
    if self.padding_mode != "zeros" and not isinstance(pad, str):
      mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[self.padding_mode]
      x = jnp.pad(x, ((0, 0), pad[0], pad[1], (0, 0)), mode=mode)
      pad = ((0, 0), (0, 0))
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.weight[...].astype(self.dtype), window_strides=self.stride, padding=pad,
        rhs_dilation=self.dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=self.groups, precision=self.precision or default_precision(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Linear(nnx.Module):
  """torch.nn.Linear. weight: [in, out] (torch [out, in])."""

  def __init__(self, in_features: int, out_features: int, *, bias: bool = True, dtype=jnp.float32,
               param_dtype=jnp.float32, precision=None, rngs: nnx.Rngs):
    bound = 1.0 / np.sqrt(in_features)
    self.dtype, self.precision = dtype, precision
    self.weight = param(_uniform(rngs.params(), (in_features, out_features), bound, param_dtype), "linear",
                        ("embed", "mlp"))
    self.bias = param(_uniform(rngs.params(), (out_features,), bound, param_dtype), "none", ("mlp",)) if bias else None

  def __call__(self, x: Array) -> Array:
    y = jnp.matmul(x.astype(self.dtype), self.weight[...].astype(self.dtype),
                   precision=self.precision or default_precision(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class LayerNorm(nnx.Module):
  """torch.nn.LayerNorm over the last axis; statistics in fp32."""

  def __init__(self, num_features: int, *, eps: float = 1e-5, elementwise_affine: bool = True,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.eps, self.dtype = eps, dtype
    self.weight = param(jnp.ones((num_features,), param_dtype), "none", ("embed",)) if elementwise_affine else None
    self.bias = param(jnp.zeros((num_features,), param_dtype), "none", ("embed",)) if elementwise_affine else None

  def __call__(self, x: Array) -> Array:
    xf = x.astype(jnp.float32)
    mean = tree_mean(xf, -1, keepdims=True)  # batch-invariant order (r3p.nn.numerics)
    var = tree_mean(jnp.square(xf - mean), -1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    if self.weight is not None:
      y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


class BatchNorm(nnx.Module):
  """torch.nn.BatchNorm{1,2,3}d on channels-last input (channel = last axis).

  Eval (`use_running_average=True`, the default) uses running statistics as torch's `eval()` does. In training
  the batch statistics are a mean over every non-channel axis; under `jax.jit` with a batch-sharded input this
  mean is global, i.e. cross-replica (SyncBatchNorm semantics) without extra code.
  """

  def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
               use_running_average: bool = True, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    self.eps, self.momentum, self.dtype = eps, momentum, dtype
    self.use_running_average = use_running_average
    self.weight = param(jnp.ones((num_features,), param_dtype), "none", ("mlp",)) if affine else None
    self.bias = param(jnp.zeros((num_features,), param_dtype), "none", ("mlp",)) if affine else None
    self.running_mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32), torch_layout="none")
    self.running_var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32), torch_layout="none")
    self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32), torch_layout="none")

  def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
    ura = self.use_running_average if use_running_average is None else use_running_average
    xf = x.astype(jnp.float32)
    if ura:
      mean, var = self.running_mean[...], self.running_var[...]
    else:
      axes = tuple(range(x.ndim - 1))
      # Per-item fixed-order sums over the non-batch axes, then a plain sum over the (possibly sharded) batch
      # axis, which GSPMD turns into one all-reduce (a tree over the batch axis would move data across devices).
      def _mean(v):
        return jnp.sum(tree_sum(v, axes[1:]), axis=0) / np.float32(n)
      n = np.prod([x.shape[a] for a in axes])
      mean = _mean(xf)
      var = _mean(jnp.square(xf - mean))
      unbiased = var * n / max(n - 1, 1)  # torch updates running_var with the unbiased estimate
      self.running_mean[...] = (1 - self.momentum) * self.running_mean[...] + self.momentum * mean
      self.running_var[...] = (1 - self.momentum) * self.running_var[...] + self.momentum * unbiased
      self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    if self.weight is not None:
      y = y * self.weight[...] + self.bias[...]
    return y.astype(self.dtype)


class GroupNorm(nnx.Module):
  """torch.nn.GroupNorm on channels-last input; statistics in fp32."""

  def __init__(self, num_groups: int, num_channels: int, *, eps: float = 1e-5, affine: bool = True,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.num_groups, self.eps, self.dtype = num_groups, eps, dtype
    self.weight = param(jnp.ones((num_channels,), param_dtype), "none", ("mlp",)) if affine else None
    self.bias = param(jnp.zeros((num_channels,), param_dtype), "none", ("mlp",)) if affine else None

  def __call__(self, x: Array) -> Array:
    shp = x.shape
    xg = x.astype(jnp.float32).reshape(shp[0], -1, self.num_groups, shp[-1] // self.num_groups)
    axes = (1, 3)
    mean = tree_mean(xg, axes, keepdims=True)
    var = tree_mean(jnp.square(xg - mean), axes, keepdims=True)
    y = ((xg - mean) * jax.lax.rsqrt(var + self.eps)).reshape(shp)
    if self.weight is not None:
      y = y * self.weight[...] + self.bias[...]
    return y.astype(self.dtype)


class Embedding(nnx.Module):
  """torch.nn.Embedding. weight: [num, dim] (same as torch)."""

  def __init__(self, num_embeddings: int, embedding_dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.dtype = dtype
    self.weight = param(jax.random.normal(rngs.params(), (num_embeddings, embedding_dim), param_dtype), "none",
                        (None, "embed"))

  def __call__(self, idx: Array) -> Array:
    return jnp.take(self.weight[...], idx, axis=0).astype(self.dtype)


def interpolate_bilinear(x: Array, size: tuple[int, int], align_corners: bool = False,
                         antialias: bool = False) -> Array:
  """F.interpolate(mode='bilinear') on NHWC, torch semantics (no antialias unless asked).

  align_corners=False: source coordinate = (dst + 0.5) * in/out - 0.5, clamped at 0 (torch clamps negatives).
  """
  if antialias:
    raise NotImplementedError("antialias=True: use jax.image.resize semantics explicitly")
  n, h, w, c = x.shape
  oh, ow = size

  def coords(o, i):
    d = jnp.arange(o, dtype=jnp.float32)
    if align_corners:
      s = d * ((i - 1) / (o - 1)) if o > 1 else jnp.zeros_like(d)
    else:
      s = jnp.maximum((d + 0.5) * (i / o) - 0.5, 0.0)
    i0 = jnp.clip(jnp.floor(s).astype(jnp.int32), 0, i - 1)
    i1 = jnp.minimum(i0 + 1, i - 1)
    t = s - i0.astype(jnp.float32)
    return i0, i1, t

  y0, y1, ty = coords(oh, h)
  x0, x1, tx = coords(ow, w)
  xf = x.astype(jnp.float32)
  top = xf[:, y0] * (1 - ty)[None, :, None, None] + xf[:, y1] * ty[None, :, None, None]
  out = top[:, :, x0] * (1 - tx)[None, None, :, None] + top[:, :, x1] * tx[None, None, :, None]
  return out.astype(x.dtype)
