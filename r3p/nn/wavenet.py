"""WaveNet-style gated conv stack (`WN`) and the mean-only residual-coupling flow, channels-last [B, T, C].

Torch names follow `modules/audio2motion/flow_base.py` of the official code (`in_layers.i`, `res_skip_layers.i`,
`cond_layer`, `flows.2k` = coupling layer, `flows.2k+1` = Flip, `pre`, `enc`, `post`). The official convs are
weight-normed (`weight_g` / `weight_v`, dim 0); fold them with `r3p.convert.torch_to_nnx.fold_weight_norm` before
loading: these modules hold the effective weights.

Masks are [B, T, 1] float arrays (1 = valid) or the scalar 1.0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from r3p.nn.conv1d import Conv1d

Array = jax.Array


class WN(nnx.Module):
  """Gated dilated conv stack: per layer tanh(a) * sigmoid(b) of in_layer(x) + cond slice; residual and skip sums."""

  def __init__(self, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
               gin_channels: int = 0, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    assert kernel_size % 2 == 1 and hidden_channels % 2 == 0
    self.hidden_channels, self.n_layers = hidden_channels, n_layers
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.cond_layer = Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1, **kw) if gin_channels else None
    in_layers, res_skip = [], []
    for i in range(n_layers):
      d = dilation_rate ** i
      in_layers.append(Conv1d(hidden_channels, 2 * hidden_channels, kernel_size, dilation=d,
                              padding=(kernel_size * d - d) // 2, **kw))
      out = 2 * hidden_channels if i < n_layers - 1 else hidden_channels  # the last layer only feeds the skip sum
      res_skip.append(Conv1d(hidden_channels, out, 1, **kw))
    self.in_layers = nnx.List(in_layers)
    self.res_skip_layers = nnx.List(res_skip)

  def __call__(self, x: Array, x_mask=1.0, g: Array | None = None) -> Array:
    h = self.hidden_channels
    output = jnp.zeros_like(x)
    if g is not None and self.cond_layer is not None:
      g = self.cond_layer(g)
    for i in range(self.n_layers):
      a = self.in_layers[i](x)
      if g is not None:
        a = a + g[..., i * 2 * h:(i + 1) * 2 * h]
      acts = jnp.tanh(a[..., :h]) * jax.nn.sigmoid(a[..., h:])
      rs = self.res_skip_layers[i](acts)
      if i < self.n_layers - 1:
        x = (x + rs[..., :h]) * x_mask
        output = output + rs[..., h:]
      else:
        output = output + rs
    return output * x_mask


class Flip(nnx.Module):
  """Reverse the channel order (its own inverse; log-det 0)."""

  def __call__(self, x, x_mask=1.0, g=None, reverse: bool = False):
    return jnp.flip(x, -1)


class ResidualCouplingLayer(nnx.Module):
  """Mean-only affine coupling: x1 <- x1 + m(x0, g) (forward) or x1 - m (reverse); volume preserving."""

  def __init__(self, channels: int, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
               gin_channels: int = 0, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.half = channels // 2
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.pre = Conv1d(self.half, hidden_channels, 1, **kw)
    self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels, **kw)
    self.post = Conv1d(hidden_channels, self.half, 1, **kw)
    # The official init zeroes `post` so that the flow starts as the identity.
    self.post.weight[...] = jnp.zeros_like(self.post.weight[...])
    self.post.bias[...] = jnp.zeros_like(self.post.bias[...])

  def __call__(self, x, x_mask=1.0, g=None, reverse: bool = False):
    x0, x1 = x[..., :self.half], x[..., self.half:]
    h = self.pre(x0) * x_mask
    h = self.enc(h, x_mask, g)
    m = self.post(h) * x_mask
    x1 = (x1 - m) * x_mask if reverse else m + x1 * x_mask
    return jnp.concatenate([x0, x1], -1)


class ResidualCouplingBlock(nnx.Module):
  """n_flows x [coupling, Flip]; reverse runs the list backwards."""

  def __init__(self, channels: int, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
               n_flows: int = 4, gin_channels: int = 0, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    flows = []
    for _ in range(n_flows):
      flows.append(ResidualCouplingLayer(channels, hidden_channels, kernel_size, dilation_rate, n_layers,
                                         gin_channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs))
      flows.append(Flip())
    self.flows = nnx.List(flows)

  def __call__(self, x, x_mask=1.0, g=None, reverse: bool = False):
    seq = list(self.flows)
    for f in (reversed(seq) if reverse else seq):
      x = f(x, x_mask, g, reverse=reverse)
    return x
