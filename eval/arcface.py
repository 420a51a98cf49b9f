"""ArcFace IResNet (insightface arcface_torch `iresnet50` / `iresnet100`) and CSIM, on NHWC RGB 112x112 crops.

Input: 5-point aligned crops (`eval.face_align.norm_crop`), RGB, `(u8 / 255 - 0.5) / 0.5`. Network (eval):
conv3x3 -> BN -> PReLU -> 4 stages of IBasicBlock (BN, conv3x3, BN, PReLU, conv3x3(stride), BN, + identity; the
first block of a stage has stride 2 and a conv1x1+BN downsample) -> BN -> flatten in torch's (C, H, W) order ->
fc 25088 -> 512 -> BatchNorm1d. The embedding is not normalised by the network; CSIM is the cosine similarity.
Keys are those of the released `backbone.pth` files; the block counts are read from the state dict.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.nn.layers import BatchNorm, Conv2d, Linear, param

LAYOUTS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3),
           "r200": (6, 26, 60, 6)}


class PReLU(nnx.Module):
  def __init__(self, c: int):
    self.weight = param(jnp.full((c,), 0.25, jnp.float32), "none")

  def __call__(self, x):
    return jnp.where(x >= 0, x, self.weight[...] * x)


class Downsample(nnx.Module):
  def __init__(self, cin, cout, stride, *, rngs):
    self.layers = nnx.List([Conv2d(cin, cout, 1, stride=stride, bias=False, rngs=rngs), BatchNorm(cout, eps=1e-5)])

  def __call__(self, x):
    return self.layers[1](self.layers[0](x))


class IBasicBlock(nnx.Module):
  def __init__(self, cin, planes, stride, downsample: bool, *, rngs):
    self.bn1 = BatchNorm(cin, eps=1e-5)
    self.conv1 = Conv2d(cin, planes, 3, padding=1, bias=False, rngs=rngs)
    self.bn2 = BatchNorm(planes, eps=1e-5)
    self.prelu = PReLU(planes)
    self.conv2 = Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False, rngs=rngs)
    self.bn3 = BatchNorm(planes, eps=1e-5)
    self.downsample = Downsample(cin, planes, stride, rngs=rngs).layers if downsample else None

  def __call__(self, x):
    out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
    idn = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
    return out + idn


class IResNet(nnx.Module):
  def __init__(self, layers=(3, 4, 14, 3), num_features: int = 512, *, rngs: nnx.Rngs):
    self.conv1 = Conv2d(3, 64, 3, padding=1, bias=False, rngs=rngs)
    self.bn1 = BatchNorm(64, eps=1e-5)
    self.prelu = PReLU(64)
    cin = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
      blocks = [IBasicBlock(cin, planes, 2, True, rngs=rngs)]
      blocks += [IBasicBlock(planes, planes, 1, False, rngs=rngs) for _ in range(n - 1)]
      setattr(self, f"layer{i + 1}", nnx.List(blocks))
      cin = planes
    self.bn2 = BatchNorm(512, eps=1e-5)
    self.fc = Linear(512 * 7 * 7, num_features, rngs=rngs)
    self.features = BatchNorm(num_features, eps=1e-5)

  def __call__(self, x, *, return_parts: bool = False):
    """x [N, 112, 112, 3] float in [-1, 1] (or uint8 RGB) -> embedding [N, 512] (not normalised)."""
    x = jnp.asarray(x)
    if x.dtype == jnp.uint8:
      x = (x.astype(jnp.float32) / 255.0 - 0.5) / 0.5
    x = self.prelu(self.bn1(self.conv1(x.astype(jnp.float32))))
    parts = {}
    for i in range(1, 5):
      for blk in getattr(self, f"layer{i}"):
        x = blk(x)
      parts[f"layer{i}"] = x
    x = self.bn2(x)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch flattens (C, H, W)
    fc = self.fc(x)
    emb = self.features(fc)
    if return_parts:
      parts["fc_out"] = fc
      return emb, parts
    return emb


def normalize(e, eps: float = 1e-12):
  return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), eps)


def layout_from_state_dict(sd) -> tuple[int, ...]:
  counts = []
  for i in range(1, 5):
    idx = {int(m.group(1)) for k in sd if (m := re.match(rf"layer{i}\.(\d+)\.", k))}
    if not idx:
      raise ValueError(f"not an IResNet state dict: no layer{i}.* keys")
    counts.append(max(idx) + 1)
  return tuple(counts)


def build(sd=None, *, arch: str = "r100", seed: int = 0) -> IResNet:
  """IResNet from a backbone.pth state dict (layout read from it) or seeded random weights of `arch`."""
  from eval._nets import load_weights, random_like_torch
  layers = layout_from_state_dict(sd) if sd is not None else LAYOUTS[arch]
  nf = int(np.shape(sd["fc.weight"])[0]) if sd is not None and "fc.weight" in sd else 512
  model = IResNet(layers, nf, rngs=nnx.Rngs(seed))
  if sd is None:
    sd = random_like_torch(model, seed)
    sd = {k: (np.full_like(v, 0.25) if k.endswith("prelu.weight") else v) for k, v in sd.items()}
  load_weights(model, sd, what="ArcFace IResNet")
  return model


def embed_fn(model: IResNet):
  """Jitted [N, 112, 112, 3] uint8 RGB crops -> L2-normalised embeddings [N, 512]."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def f(state, crops):
    with jax.default_matmul_precision("highest"):
      return normalize(nnx.merge(graphdef, state)(crops))
  return lambda crops: f(state, crops)
