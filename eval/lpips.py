"""LPIPS v0.1 (Zhang et al. 2018), AlexNet and VGG16 backbones, on NHWC images in [-1, 1].

`x = (in - shift) / scale` (ScalingLayer), backbone ReLU features at five depths, each normalised over channels
(f / (||f||_2 + 1e-10)), squared difference, a 1x1 linear head (non-negative weights, no bias) to one channel,
spatial mean, summed over the five layers. Weights: torchvision `alexnet` / `vgg16` `features.N.*` keys and the
lpips package's `v0.1/<net>.pth` keys `linK.model.1.weight`, merged into one state dict (see eval.convert_weights).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from eval._nets import Op, Sequential, conv
from r3p.nn.layers import Conv2d, interpolate_bilinear

SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)

# torchvision `features` layouts: ('c', in, out, k, stride, pad) | ('r',) | ('m', k, stride)
_ALEX = [("c", 3, 64, 11, 4, 2), ("r",), ("m", 3, 2), ("c", 64, 192, 5, 1, 2), ("r",), ("m", 3, 2),
         ("c", 192, 384, 3, 1, 1), ("r",), ("c", 384, 256, 3, 1, 1), ("r",), ("c", 256, 256, 3, 1, 1), ("r",)]
_ALEX_TAPS = (1, 4, 7, 9, 11)


def _vgg_layers():
  cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
  out, cin = [], 3
  for v in cfg:
    if v == "M":
      out.append(("m", 2, 2))
    else:
      out += [("c", cin, v, 3, 1, 1), ("r",)]
      cin = v
  return out


_VGG = _vgg_layers()
_VGG_TAPS = (3, 8, 15, 22, 29)
NETS = {"alex": (_ALEX, _ALEX_TAPS), "vgg": (_VGG, _VGG_TAPS)}


def build_features(spec, rngs) -> Sequential:
  layers = []
  for s in spec:
    if s[0] == "c":
      layers.append(conv(s[1], s[2], s[3], s[4], s[5], rngs=rngs))
    elif s[0] == "r":
      layers.append(Op("relu"))
    else:
      layers.append(Op("maxpool", s[1], s[2]))
  return layers


class LinHead(nnx.Module):
  """lpips NetLinLayer: model = Sequential(Dropout, Conv2d(C, 1, 1, bias=False))."""

  def __init__(self, c: int, *, rngs: nnx.Rngs):
    self.model = nnx.List([Op("identity"), Conv2d(c, 1, 1, bias=False, rngs=rngs)])

  def __call__(self, x):
    return self.model[1](x)


class LPIPS(nnx.Module):
  def __init__(self, net: str = "alex", *, rngs: nnx.Rngs):
    if net not in NETS:
      raise ValueError(f"LPIPS net must be one of {sorted(NETS)}, not {net!r}")
    spec, self.taps = NETS[net]
    self.net_name = net
    self.features = nnx.List(build_features(spec, rngs))
    chans = [spec[t - 1][2] for t in self.taps]
    for i, c in enumerate(chans):
      setattr(self, f"lin{i}", LinHead(c, rngs=rngs))

  def backbone(self, x):
    feats = []
    for i, layer in enumerate(self.features):
      x = layer(x)
      if i in self.taps:
        feats.append(x)
      if i >= self.taps[-1]:
        break
    return feats

  def __call__(self, in0, in1, *, spatial: bool = False, return_parts: bool = False):
    """in0, in1: [N, H, W, 3] RGB in [-1, 1]. Returns distance [N] (or [N, H, W] with spatial=True)."""
    shift, scale = jnp.asarray(SHIFT), jnp.asarray(SCALE)
    s0 = (jnp.asarray(in0, jnp.float32) - shift) / scale
    s1 = (jnp.asarray(in1, jnp.float32) - shift) / scale
    n = s0.shape[0]
    f = self.backbone(jnp.concatenate([s0, s1], 0))
    per_layer, maps = [], []
    for i, fl in enumerate(f):
      nf = fl / (jnp.sqrt(jnp.sum(fl * fl, axis=-1, keepdims=True)) + 1e-10)
      d = jnp.square(nf[:n] - nf[n:])
      lin = getattr(self, f"lin{i}")(d)  # [N, h, w, 1]
      per_layer.append(jnp.mean(lin, axis=(1, 2, 3)))
      if spatial:
        maps.append(interpolate_bilinear(lin, s0.shape[1:3], align_corners=False)[..., 0])
    dist = sum(maps) if spatial else sum(per_layer)
    if return_parts:
      return dist, {"per_layer": jnp.stack(per_layer, -1), "scaled_in0": s0, "scaled_in1": s1, "feats": f}
    return dist


def build(net: str, sd=None, *, seed: int = 0) -> LPIPS:
  """An LPIPS model with weights from `sd` (torch keys) or seeded random ones (`sd=None`)."""
  from eval._nets import load_weights, random_like_torch
  model = LPIPS(net, rngs=nnx.Rngs(seed))
  if sd is None:  # the released lin heads are non-negative
    sd = {k: (np.abs(v) if k.startswith("lin") else v) for k, v in random_like_torch(model, seed).items()}
  load_weights(model, sd, what=f"LPIPS-{net}")
  return model


def distance_fn(model: LPIPS):
  """A jitted (in0, in1) -> [N] distance for fixed-size batches (uint8 NHWC inputs are mapped to [-1, 1])."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def f(state, a, b):  # weights are an argument, not constants folded into the program
    m = nnx.merge(graphdef, state)
    if a.dtype == jnp.uint8:
      a = a.astype(jnp.float32) / 127.5 - 1.0
      b = b.astype(jnp.float32) / 127.5 - 1.0
    with jax.default_matmul_precision("highest"):
      return m(a, b)
  return lambda a, b: f(state, a, b)
