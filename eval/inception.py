"""The FID Inception-v3 (pytorch-fid's port of the 2015 TF graph) on NHWC images in [0, 1], pool3 features.

torchvision Inception3 names (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_var`, ...) so that the
released `pt_inception-2015-12-05-*.pth` loads as is. FID-specific blocks: Mixed_5b..5d / 6b..6e / 7b average
pool with count_include_pad=False in their pool branch, Mixed_7c max-pools there. Input: bilinear resize to
299x299 (align_corners=False, no antialias), then 2x - 1. BatchNorm eps 0.001 (eval statistics).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from eval._nets import avg_pool, max_pool
from r3p.nn.layers import BatchNorm, Conv2d, interpolate_bilinear


class BasicConv2d(nnx.Module):
  def __init__(self, cin, cout, k, s=1, p=0, *, rngs):
    self.conv = Conv2d(cin, cout, k, stride=s, padding=p, bias=False, rngs=rngs)
    self.bn = BatchNorm(cout, eps=0.001)

  def __call__(self, x):
    return jax.nn.relu(self.bn(self.conv(x)))


def _cat(xs):
  return jnp.concatenate(xs, axis=-1)


class InceptionA(nnx.Module):
  def __init__(self, cin, pool_features, *, rngs):
    self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, p=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, p=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, p=1, rngs=rngs)
    self.branch_pool = BasicConv2d(cin, pool_features, 1, rngs=rngs)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(avg_pool(x, 3, 1, 1, count_include_pad=False))
    return _cat([b1, b5, b3, bp])


class InceptionB(nnx.Module):
  def __init__(self, cin, *, rngs):
    self.branch3x3 = BasicConv2d(cin, 384, 3, s=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, p=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, s=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3(x)
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return _cat([b3, bd, max_pool(x, 3, 2)])


class InceptionC(nnx.Module):
  def __init__(self, cin, c7, *, rngs):
    self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), p=(0, 3), rngs=rngs)
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), p=(3, 0), rngs=rngs)
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), p=(3, 0), rngs=rngs)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), p=(0, 3), rngs=rngs)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), p=(3, 0), rngs=rngs)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), p=(0, 3), rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for i in range(1, 6):
      bd = getattr(self, f"branch7x7dbl_{i}")(bd)
    bp = self.branch_pool(avg_pool(x, 3, 1, 1, count_include_pad=False))
    return _cat([b1, b7, bd, bp])


class InceptionD(nnx.Module):
  def __init__(self, cin, *, rngs):
    self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, s=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), p=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), p=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, s=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return _cat([b3, b7, max_pool(x, 3, 2)])


class InceptionE(nnx.Module):
  def __init__(self, cin, pool: str, *, rngs):
    self.pool = pool  # 'avg' (FIDInceptionE_1) or 'max' (FIDInceptionE_2)
    self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), p=(0, 1), rngs=rngs)
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), p=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, p=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), p=(0, 1), rngs=rngs)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), p=(1, 0), rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    t = self.branch3x3_1(x)
    b3 = _cat([self.branch3x3_2a(t), self.branch3x3_2b(t)])
    t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = _cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)])
    pooled = avg_pool(x, 3, 1, 1, count_include_pad=False) if self.pool == "avg" else max_pool(x, 3, 1, 1)
    return _cat([b1, b3, bd, self.branch_pool(pooled)])


class FIDInceptionV3(nnx.Module):
  """pool3 (2048-d) of the FID Inception. Unused keys of the released file: `fc.weight`, `fc.bias`."""

  UNUSED = ("fc.weight", "fc.bias")

  def __init__(self, *, rngs: nnx.Rngs):
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, s=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, p=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
    self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, "avg", rngs=rngs)
    self.Mixed_7c = InceptionE(2048, "max", rngs=rngs)

  def __call__(self, images, *, return_blocks: bool = False):
    """images [N, H, W, 3] float in [0, 1] (or uint8) -> pool3 [N, 2048]."""
    x = jnp.asarray(images)
    if x.dtype == jnp.uint8:
      x = x.astype(jnp.float32) / 255.0
    x = x.astype(jnp.float32)
    resized = interpolate_bilinear(x, (299, 299), align_corners=False)
    x = 2.0 * resized - 1.0
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    b0 = max_pool(x, 3, 2)
    b1 = max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(b0)), 3, 2)
    x = b1
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
      x = getattr(self, name)(x)
    b2 = x
    x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
    pool3 = jnp.mean(x, axis=(1, 2))
    if return_blocks:
      return pool3, {"resized": resized, "block0": b0, "block1": b1, "block2": b2}
    return pool3


def build(sd=None, *, seed: int = 0) -> FIDInceptionV3:
  from eval._nets import load_weights, random_like_torch
  model = FIDInceptionV3(rngs=nnx.Rngs(seed))
  load_weights(model, sd if sd is not None else random_like_torch(model, seed), unused=FIDInceptionV3.UNUSED,
               what="FID Inception")
  return model


def features_fn(model: FIDInceptionV3):
  graphdef, state = nnx.split(model)

  @jax.jit
  def f(state, images):
    with jax.default_matmul_precision("highest"):
      return nnx.merge(graphdef, state)(images)
  return lambda images: f(state, images)
