"""Small building blocks shared by the metric networks: a torch-indexed Sequential, pooling, weight loading."""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.convert.torch_to_nnx import load_state_dict, model_variables
from r3p.nn.layers import BatchNorm, Conv2d, Linear


class Op(nnx.Module):
  """A parameter-free layer of a torch Sequential (keeps the torch index of the layers after it)."""

  def __init__(self, kind: str, *args):
    self.kind, self.args = kind, tuple(args)

  def __call__(self, x):
    if self.kind == "relu":
      return jax.nn.relu(x)
    if self.kind == "identity":
      return x
    if self.kind == "maxpool":
      return max_pool(x, *self.args)
    if self.kind == "avgpool":
      return avg_pool(x, *self.args)
    raise ValueError(self.kind)


def _window(x, k, s, p, init, op):
  nd = x.ndim - 2
  k, s, p = (k,) * nd if isinstance(k, int) else tuple(k), (s,) * nd if isinstance(s, int) else tuple(s), \
      (p,) * nd if isinstance(p, int) else tuple(p)
  return jax.lax.reduce_window(x, init, op, (1,) + k + (1,), (1,) + s + (1,),
                               ((0, 0),) + tuple((q, q) for q in p) + ((0, 0),))


def max_pool(x, k, s=None, p=0):
  """torch MaxPool{2,3}d (floor mode, -inf padding) on channels-last input."""
  return _window(x, k, k if s is None else s, p, -jnp.inf, jax.lax.max)


def avg_pool(x, k, s=None, p=0, count_include_pad: bool = True):
  """torch AvgPool2d (floor mode); count_include_pad=False divides by the number of real pixels."""
  s = k if s is None else s
  tot = _window(x, k, s, p, 0.0, jax.lax.add)
  if count_include_pad:
    kk = (k,) * (x.ndim - 2) if isinstance(k, int) else tuple(k)
    return tot / float(np.prod(kk))
  ones = jnp.ones((1,) + x.shape[1:-1] + (1,), x.dtype)
  return tot / _window(ones, k, s, p, 0.0, jax.lax.add)


class Sequential(nnx.Module):
  """torch.nn.Sequential with torch indices: `layers` is the list of modules; call returns outputs at `taps`."""

  def __init__(self, layers: Sequence[nnx.Module]):
    self.layers = nnx.List(list(layers))

  def __call__(self, x, taps: Sequence[int] = (), stop: int | None = None):
    outs = {}
    for i, layer in enumerate(self.layers):
      if stop is not None and i >= stop:
        break
      x = layer(x)
      if i in taps:
        outs[i] = x
    return (x, outs) if taps else x


def conv(cin, cout, k, s=1, p=0, bias=True, *, rngs):
  return Conv2d(cin, cout, k, stride=s, padding=p, bias=bias, rngs=rngs)


def fill_num_batches_tracked(model: nnx.Module, sd: Mapping[str, np.ndarray], prefix: str = "") -> dict:
  """Old checkpoints (torch < 0.4.1) have no BatchNorm `num_batches_tracked`; it is not used in eval: add zeros."""
  sd = dict(sd)
  for k in model_variables(model):
    if k.endswith("num_batches_tracked") and prefix + k not in sd:
      sd[prefix + k] = np.zeros((), np.int64)
  return sd


def load_weights(model: nnx.Module, sd: Mapping[str, np.ndarray], *, prefix: str = "", unused=(), what: str = ""):
  """Strict load with the wrapper-friendly extras (missing num_batches_tracked filled)."""
  sd = fill_num_batches_tracked(model, sd, prefix)
  try:
    return load_state_dict(model, sd, prefix=prefix, unused=unused)
  except ValueError as e:
    raise ValueError(f"{what + ': ' if what else ''}{e}") from None


def random_like_torch(model: nnx.Module, seed: int = 0) -> dict[str, np.ndarray]:
  """Seeded He-normal weights for --random_weights (torch layouts): convs/linears N(0, 2/fan_in), biases 0,
  BN identity. Deterministic for a seed; meaningless as a metric, only for smoke tests."""
  from r3p.convert.torch_to_nnx import export_state_dict
  sd = export_state_dict(model)
  rng = np.random.default_rng(seed)
  out = {}
  for k, v in sd.items():
    if k.endswith("weight") and v.ndim >= 2:
      fan_in = int(np.prod(v.shape[1:]))
      out[k] = (rng.standard_normal(v.shape) * np.sqrt(2.0 / fan_in)).astype(v.dtype)
    elif k.endswith("running_var") or (k.endswith("weight") and v.ndim == 1):
      out[k] = np.ones_like(v)
    else:
      out[k] = np.zeros_like(v)
  return out
