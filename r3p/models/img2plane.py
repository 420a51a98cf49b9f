"""Canonical image-to-plane backbone (`cano_img2plane_backbone`, official `Img2PlaneModel`), Flax NNX, NHWC.

Source image [B, 512, 512, 3] in [-1, 1] -> canonical tri-plane [B, 3, 256, 256, 32] (r3p layout, flipped as the
official code does; see `r3p.models.planes`). MODEL.md §1.1 / §2.2. Released config: input mode `rgb` (+2 coordinate
channels = 5), backbone scale `standard` (LowResolutionViT 5 blocks, TriplanePredictorViT 1 block with sr_ratio 2).

  x5 = [img, row/512, col/512]                                      [B, 512, 512, 5]
  low  = low_reso_vit(low_reso_encoder(x5))                         [B, 64, 64, 256] -> [B, 256, 256, 96]
  high = high_reso_encoder(x5)                                      [B, 256, 256, 96]
  planes = to_planes(triplane_predictor_vit(low, high))             [B, 3, 256, 256, 32]

Attribute names are the torch state_dict names below `cano_img2plane_backbone.`, so
`load_state_dict(model, sd, prefix="cano_img2plane_backbone.", unused=UNUSED_KEYS)` loads every key.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.models.planes import to_planes
from r3p.nn.layers import Conv2d
from r3p.nn.resnet import DeepLabV3, LeakyReLU, run_sequential
from r3p.nn.vit import Block, OverlapPatchEmbed, pixel_shuffle, upsample_bilinear_align_corners

Array = jax.Array

# Every I2P state_dict key is used at inference. The only non-weight entries are the BatchNorm
# `num_batches_tracked` counters, which the NNX BatchNorm keeps (as BatchStat) and therefore loads.
UNUSED_KEYS: tuple[str, ...] = ()

_LRELU = 0.01  # nn.LeakyReLU() default slope, used throughout the I2P


def _lrelu(x: Array) -> Array:
  return jnp.where(x >= 0, x, x * jnp.asarray(_LRELU, x.dtype))


def coordinate_channels(img: Array) -> Array:
  """Append the official positional channels: channel C = row/H, channel C+1 = col/H ('ij' meshgrid; both are
  divided by H, MODEL.md §2.2). img [B, H, W, C] -> [B, H, W, C+2]."""
  b, h, w, _ = img.shape
  rows = jnp.arange(h, dtype=jnp.float32) / h
  cols = jnp.arange(w, dtype=jnp.float32) / h
  grid = jnp.stack(jnp.broadcast_arrays(rows[:, None], cols[None, :]), axis=-1)  # [H, W, 2]
  grid = jnp.broadcast_to(grid[None], (b, h, w, 2)).astype(img.dtype)
  return jnp.concatenate([img, grid], axis=-1)


class HighResoEncoder(nnx.Module):
  """`first` 7x7 s2 (no activation after it, as the official code), 4 x [3x3 conv + LeakyReLU(0.01)] as
  `conv_layers.{0,2,4,6}`, `final` 3x3. [B, H, W, in] -> [B, H/2, W/2, out]."""

  def __init__(self, in_dim: int = 5, out_dim: int = 96, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.first = Conv2d(in_dim, 64, 7, stride=2, padding=3, **kw)
    layers = []
    for cin in (64, 96, 96, 96):
      layers += [Conv2d(cin, 96, 3, padding=1, **kw), LeakyReLU(_LRELU)]
    self.conv_layers = nnx.List(layers)
    self.final = Conv2d(96, out_dim, 3, padding=1, **kw)

  def __call__(self, x: Array) -> Array:
    return self.final(run_sequential(self.conv_layers, self.first(x)))


class LowResolutionViT(nnx.Module):
  """Patch embed (3x3 s2, 256->1024, LN) -> `num_blocks` Blocks (4 heads, mlp 2, sr 1) -> token grid ->
  PixelShuffle(2) -> ×2 bilinear (align_corners) -> conv 256->128 -> ReLU -> ×2 bilinear -> conv 128->128 -> ReLU
  -> `final_conv` 128->96. [B, 64, 64, 256] -> [B, 256, 256, 96]."""

  def __init__(self, in_chans: int = 256, embed_dim: int = 1024, num_blocks: int = 5, out_channels: int = 96, *,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.num_blocks = num_blocks
    self.patch_embed = OverlapPatchEmbed(in_chans, embed_dim, patch_size=3, stride=2, **kw)
    for i in range(1, num_blocks + 1):
      setattr(self, f"block{i}", Block(embed_dim, 4, mlp_ratio=2, sr_ratio=1, **kw))
    self.conv_after_upsample1 = Conv2d(embed_dim // 4, 128, 3, padding=1, **kw)
    self.conv_after_upsample2 = Conv2d(128, 128, 3, padding=1, **kw)
    self.final_conv = Conv2d(128, out_channels, 3, padding=1, **kw)

  def __call__(self, x: Array) -> Array:
    t, h, w = self.patch_embed(x)
    for i in range(1, self.num_blocks + 1):
      t = getattr(self, f"block{i}")(t, h, w)
    y = pixel_shuffle(t.reshape(t.shape[0], h, w, t.shape[-1]), 2)
    y = jax.nn.relu(self.conv_after_upsample1(upsample_bilinear_align_corners(y, 2)))
    y = jax.nn.relu(self.conv_after_upsample2(upsample_bilinear_align_corners(y, 2)))
    return self.final_conv(y)


class TriplanePredictorViT(nnx.Module):
  """cat(low, high) 192 -> conv 256 -> LReLU -> conv 128 -> LReLU -> patch embed (3x3 s2 -> 1024, LN) ->
  Block(4 heads, mlp 2, sr 2) -> token grid -> PixelShuffle(2) -> cat(·, low) 352 -> 3 x [conv + LReLU] ->
  `final_conv` -> out_channels. [B, H, W, 96] x2 -> [B, H, W, 96] (H, W even)."""

  def __init__(self, in_low: int = 96, in_high: int = 96, out_channels: int = 96, embed_dim: int = 1024,
               num_blocks: int = 1, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.num_blocks = num_blocks
    self.first_conv = Conv2d(in_low + in_high, 256, 3, padding=1, **kw)
    self.second_conv = Conv2d(256, 128, 3, padding=1, **kw)
    self.patch_embed = OverlapPatchEmbed(128, embed_dim, patch_size=3, stride=2, **kw)
    for i in range(1, num_blocks + 1):
      setattr(self, f"block{i}", Block(embed_dim, 4, mlp_ratio=2, sr_ratio=2, **kw))
    self.first_conv_after_cat = Conv2d(embed_dim // 4 + in_low, 256, 3, padding=1, **kw)
    self.second_conv_after_cat = Conv2d(256, 128, 3, padding=1, **kw)
    self.third_conv_after_cat = Conv2d(128, 128, 3, padding=1, **kw)
    self.final_conv = Conv2d(128, out_channels, 3, padding=1, **kw)

  def __call__(self, x_low: Array, x_high: Array) -> Array:
    h = jnp.concatenate([x_low, x_high.astype(x_low.dtype)], axis=-1)
    h = _lrelu(self.first_conv(h))
    h = _lrelu(self.second_conv(h))
    t, gh, gw = self.patch_embed(h)
    for i in range(1, self.num_blocks + 1):
      t = getattr(self, f"block{i}")(t, gh, gw)
    y = pixel_shuffle(t.reshape(t.shape[0], gh, gw, t.shape[-1]), 2)
    y = jnp.concatenate([y, x_low.astype(y.dtype)], axis=-1)
    y = _lrelu(self.first_conv_after_cat(y))
    y = _lrelu(self.second_conv_after_cat(y))
    y = _lrelu(self.third_conv_after_cat(y))
    return self.final_conv(y)


class Img2PlaneModel(nnx.Module):
  """The canonical I2P backbone. `__call__(img)`: img [B, 512, 512, 3] NHWC in [-1, 1] -> planes
  [B, 3, 256, 256, 32], float32 (also in bf16 mode, where the network computes in bf16)."""

  def __init__(self, *, in_channels: int = 3, out_channels: int = 96, low_vit_blocks: int = 5,
               predictor_blocks: int = 1, resnet_layers: Sequence[int] = (3, 4, 6, 3), dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.in_channels, self.dtype = in_channels, dtype
    c5 = in_channels + 2
    self.low_reso_encoder = DeepLabV3(c5, 256, resnet_layers, **kw)
    self.high_reso_encoder = HighResoEncoder(c5, 96, **kw)
    self.low_reso_vit = LowResolutionViT(256, 1024, low_vit_blocks, 96, **kw)
    self.triplane_predictor_vit = TriplanePredictorViT(96, 96, out_channels, 1024, predictor_blocks, **kw)

  def features(self, img: Array) -> dict[str, Array]:
    """Every intermediate of the forward (NHWC), keyed by the official module path below the backbone."""
    if img.ndim != 4 or img.shape[-1] != self.in_channels:
      raise ValueError(f"Img2PlaneModel expects NHWC [B, H, W, {self.in_channels}], got {img.shape}")
    if img.shape[1] % 16 or img.shape[2] % 16:
      raise ValueError(f"Img2PlaneModel: H, W must be multiples of 16, got {img.shape[1:3]}")
    x5 = coordinate_channels(img.astype(jnp.float32)).astype(self.dtype)
    enc = self.low_reso_encoder.encoder(x5)
    low = self.low_reso_encoder.decode(enc)
    low_vit = self.low_reso_vit(low)
    high = self.high_reso_encoder(x5)
    tri = self.triplane_predictor_vit(low_vit, high)
    out = {"low_reso_encoder/in0": x5}
    out.update({f"low_reso_encoder.encoder/out{i}": f for i, f in enumerate(enc)})
    out.update({"low_reso_encoder.decoder/out0": low, "low_reso_vit/out0": low_vit,
                "high_reso_encoder/out0": high, "triplane_predictor_vit/out0": tri,
                "out0": to_planes(tri.astype(jnp.float32))})
    return out

  def __call__(self, img: Array) -> Array:
    return self.features(img)["out0"]


def build_for_loading(**kwargs) -> Img2PlaneModel:
  """An `Img2PlaneModel(**kwargs)` with zero-filled weights, built without running the random initialisers (eager
  random init of 87 M parameters takes tens of seconds on CPU); meant to be filled by `load_state_dict`."""
  abstract = nnx.eval_shape(lambda: Img2PlaneModel(rngs=nnx.Rngs(0), **kwargs))
  graphdef, state = nnx.split(abstract)
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state)
  return nnx.merge(graphdef, state)
