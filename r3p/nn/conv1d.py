"""Torch-named 1-D convolutions on channels-last input [B, T, C].

Weights are stored in JAX layouts with a `torch_layout` tag (see `r3p.nn.layers.param`):
  Conv1d           torch [out, in/groups, k] -> [k, in/groups, out]   (layout 'conv')
  ConvTranspose1d  torch [in, out, k]        -> [k, in, out]          (layout 'convT')
Weight-normed torch convs are folded to plain weights before loading (`r3p.convert.torch_to_nnx.fold_weight_norm`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.nn.layers import default_precision, param

Array = jax.Array


def _uniform(key, shape, bound, dtype):
  """U(-bound, bound) drawn on the host from the key's bits: one tiny device op per call instead of one XLA
  compilation per new shape (models with many differently-shaped convs otherwise spend seconds compiling init)."""
  try:
    bits = np.asarray(jax.random.key_data(key)).astype(np.uint32).ravel()
  except jax.errors.TracerArrayConversionError:  # under jit / eval_shape: stay traceable
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  rng = np.random.default_rng([int(b) for b in bits])
  return jnp.asarray(rng.uniform(-bound, bound, shape), dtype)


class Conv1d(nnx.Module):
  """torch.nn.Conv1d on [B, T, C]. `padding` is an int (both sides) or a (left, right) pair."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, padding=0,
               dilation: int = 1, groups: int = 1, bias: bool = True, dtype=jnp.float32, param_dtype=jnp.float32,
               precision=None, rngs: nnx.Rngs):
    self.stride, self.dilation, self.groups = stride, dilation, groups
    self.padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
    self.dtype, self.precision = dtype, precision
    bound = 1.0 / np.sqrt(in_channels // groups * kernel_size)
    self.weight = param(_uniform(rngs.params(), (kernel_size, in_channels // groups, out_channels), bound,
                                 param_dtype), "conv", (None, "embed", "mlp"))
    self.bias = param(_uniform(rngs.params(), (out_channels,), bound, param_dtype), "none", ("mlp",)) if bias else None

  def __call__(self, x: Array) -> Array:
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.weight[...].astype(self.dtype), window_strides=(self.stride,),
        padding=(self.padding,), rhs_dilation=(self.dilation,), dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=self.groups, precision=self.precision or default_precision(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class ConvTranspose1d(nnx.Module):
  """torch.nn.ConvTranspose1d on [B, T, C]: out length (T - 1) * stride - 2 * padding + kernel."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, padding: int = 0,
               bias: bool = True, dtype=jnp.float32, param_dtype=jnp.float32, precision=None, rngs: nnx.Rngs):
    self.stride, self.padding, self.kernel_size = stride, padding, kernel_size
    self.dtype, self.precision = dtype, precision
    bound = 1.0 / np.sqrt(out_channels * kernel_size)  # torch's fan_in for ConvTranspose is weight.size(1) * k
    self.weight = param(_uniform(rngs.params(), (kernel_size, in_channels, out_channels), bound, param_dtype),
                        "convT", (None, "embed", "mlp"))
    self.bias = param(_uniform(rngs.params(), (out_channels,), bound, param_dtype), "none", ("mlp",)) if bias else None

  def __call__(self, x: Array) -> Array:
    k, p = self.kernel_size, self.padding
    # Transposed conv = stride-dilated input, (k - 1 - p) zero padding, flipped kernel.
    w = jnp.flip(self.weight[...].astype(self.dtype), 0)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), w, window_strides=(1,), padding=((k - 1 - p, k - 1 - p),), lhs_dilation=(self.stride,),
        dimension_numbers=("NWC", "WIO", "NWC"), precision=self.precision or default_precision(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y
