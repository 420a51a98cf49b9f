"""OSGDecoder (MODEL.md §1.3): tri-plane feature (mean over planes) -> (sigma, 32 colour/feature channels).

Official `OSGDecoder(32, {'decoder_lr_mul': 1, 'decoder_output_dim': 32})`:
  net.0 FullyConnectedLayer 32->64 (equalised LR) -> Softplus(beta=1, threshold=20) -> net.2 FullyConnectedLayer
  64->33; sigma = channel 0 (raw), rgb = sigmoid(ch 1..32)·(1 + 2·0.001) − 0.001.
The averaging over the 3 planes happens in the renderer (`r3p.render.triplane.sample_mean`), so `__call__` takes
the averaged feature. The MLP math itself is `r3p.kernels.raymarch.base.osg_mlp` (one definition, shared with the
fused ray-marching kernel, which receives `mlp_params()`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.kernels.raymarch import base as raymarch_base
from r3p.nn.layers import param

Array = jax.Array


class FullyConnectedLayer(nnx.Module):
  """StyleGAN2/EG3D FullyConnectedLayer with linear activation (MODEL.md §3.2).

  Stores the raw weight (JAX [in, out]; torch [out, in]) and applies the runtime gains of the official layer:
  weight_gain = lr_mul / sqrt(in), bias_gain = lr_mul (applied only when != 1, as the official code does).
  Official init: weight ~ N(0, 1) / lr_mul, bias = bias_init.
  """

  def __init__(self, in_features: int, out_features: int, *, lr_mul: float = 1.0, bias_init: float = 0.0,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.in_features, self.out_features = in_features, out_features
    self.lr_mul = float(lr_mul)
    self.weight_gain = self.lr_mul / np.sqrt(in_features)
    self.dtype = dtype
    w = jax.random.normal(rngs.params(), (in_features, out_features), param_dtype) / self.lr_mul
    self.weight = param(w, "linear", ("embed", "mlp"))
    self.bias = param(jnp.full((out_features,), bias_init, param_dtype), "none", ("mlp",))

  def effective(self) -> tuple[Array, Array]:
    """(W_eff [in, out], b_eff [out]) in fp32: the weight times its gain, as torch computes it at runtime."""
    w = self.weight[...].astype(jnp.float32) * jnp.float32(self.weight_gain)
    b = self.bias[...].astype(jnp.float32)
    if self.lr_mul != 1:
      b = b * jnp.float32(self.lr_mul)
    return w, b


class Softplus(nnx.Module):
  """torch.nn.Softplus(beta=1, threshold=20); parameter-free (keeps index 1 of `net`)."""

  def __call__(self, x: Array) -> Array:
    return raymarch_base.softplus(x)


class OSGDecoder(nnx.Module):
  """Torch-named: `net.0.{weight,bias}`, `net.2.{weight,bias}` (load with prefix "decoder.")."""

  def __init__(self, n_features: int = 32, *, hidden_dim: int = 64, output_dim: int = 32, lr_mul: float = 1.0,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.n_features, self.output_dim = n_features, output_dim
    self.net = nnx.List([
        FullyConnectedLayer(n_features, hidden_dim, lr_mul=lr_mul, dtype=dtype, param_dtype=param_dtype, rngs=rngs),
        Softplus(),
        FullyConnectedLayer(hidden_dim, 1 + output_dim, lr_mul=lr_mul, dtype=dtype, param_dtype=param_dtype,
                            rngs=rngs),
    ])

  def mlp_params(self) -> dict[str, Array]:
    """Effective weights {w0 [32,64], b0, w1 [64,33], b1} (fp32) for `osg_mlp` / the fused kernel."""
    w0, b0 = self.net[0].effective()
    w1, b1 = self.net[2].effective()
    return {"w0": w0, "b0": b0, "w1": w1, "b1": b1}

  def __call__(self, feat: Array) -> tuple[Array, Array]:
    """feat [..., 32] (plane-averaged) -> (sigma [..., 1], rgb [..., 32]), fp32 outputs."""
    if feat.shape[-1] != self.n_features:
      raise ValueError(f"OSGDecoder expects {self.n_features} input features, got shape {feat.shape}")
    return raymarch_base.osg_mlp(self.mlp_params(), feat, dtype=self.dtype)
