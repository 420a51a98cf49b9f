"""SegFormer MiT encoder + all-MLP head, NHWC, torch-named like the official state dict.

The transformer pieces (OverlapPatchEmbed, Block = efficient attention + Mix-FFN) are the shared ones of
`r3p.nn.vit` (also used by the I2P ViTs); this module assembles them into the 4-stage MiT with MiT's eps values and
adds the SegFormer head. Semantics follow the MiT ("Mix Transformer") encoder of SegFormer as used by the Real3D-Portrait motion adapter
(MODEL.md §1.2, §3.4):
  * Overlapping patch embedding: Conv k×k (stride s, padding k//2) then LayerNorm (eps 1e-5).
  * Efficient self-attention: q from every token; k, v from a spatially reduced token grid (Conv with
    kernel = stride = sr_ratio, then LayerNorm eps 1e-5) when sr_ratio > 1. Scores are (q·kᵀ)·d^-½
    (scale applied after the product, as the reference does), softmax over keys.
  * Mix-FFN: Linear → depthwise 3×3 conv (padding 1) → exact (erf) GELU → Linear.
  * Block and stage norms: LayerNorm with the encoder's `norm_eps` (1e-6 for MiT-b*).
  * Dropout / DropPath are identities at inference and are not modelled.

Inside a stage the tokens are [B, H·W, C] (row-major, the reference's `flatten(2).transpose(1, 2)`); stage
outputs are NHWC maps [B, H, W, C] (a reshape of the tokens).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from r3p.nn.layers import BatchNorm, Conv2d, LayerNorm, Linear, interpolate_bilinear
from r3p.nn.vit import Block, OverlapPatchEmbed

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MiTConfig:
  """Mix Transformer hyper-parameters. Defaults: MiT-b0 (3.32 M params), the SECC branch's encoder."""
  in_chans: int = 3
  embed_dims: tuple[int, ...] = (32, 64, 160, 256)
  num_heads: tuple[int, ...] = (1, 2, 5, 8)
  mlp_ratios: tuple[int, ...] = (4, 4, 4, 4)
  depths: tuple[int, ...] = (2, 2, 2, 2)
  sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
  qkv_bias: bool = True
  norm_eps: float = 1e-6  # block norms + stage norms; patch-embed and attention `sr` norms keep torch's 1e-5


MIT_B0 = MiTConfig()


class MixVisionTransformer(nnx.Module):
  """MiT encoder: 4 stages of (patch_embed{i}, block{i}.*, norm{i}); returns the 4 NHWC stage outputs.

  With a 512×512 input and MiT-b0: [B,128,128,32], [B,64,64,64], [B,32,32,160], [B,16,16,256].
  Each stage's output (after its norm) is the next stage's input.
  """

  def __init__(self, cfg: MiTConfig = MIT_B0, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    dims = cfg.embed_dims
    for i in range(4):
      in_c = cfg.in_chans if i == 0 else dims[i - 1]
      patch, stride = (7, 4) if i == 0 else (3, 2)
      setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(in_c, dims[i], patch_size=patch, stride=stride,
                                                             eps=1e-5, rngs=rngs, **kw))
      setattr(self, f"block{i + 1}", nnx.List([
          Block(dims[i], cfg.num_heads[i], mlp_ratio=cfg.mlp_ratios[i], qkv_bias=cfg.qkv_bias,
                sr_ratio=cfg.sr_ratios[i], eps=cfg.norm_eps, sr_eps=1e-5, rngs=rngs, **kw)
          for _ in range(cfg.depths[i])]))
      setattr(self, f"norm{i + 1}", LayerNorm(dims[i], eps=cfg.norm_eps, **kw))

  def stage(self, i: int, x: Array) -> Array:
    """Stage i (0-based): NHWC input (image or previous stage output) -> NHWC stage output."""
    t, h, w = getattr(self, f"patch_embed{i + 1}")(x)
    for blk in getattr(self, f"block{i + 1}"):
      t = blk(t, h, w)
    t = getattr(self, f"norm{i + 1}")(t)
    return t.reshape(t.shape[0], h, w, t.shape[-1])

  def __call__(self, x: Array) -> list[Array]:
    outs = []
    for i in range(4):
      x = self.stage(i, x)
      outs.append(x)
    return outs


class HeadMLP(nnx.Module):
  """Per-token Linear (the head's `linear_c{i}`; torch name of the Linear: `proj`)."""

  def __init__(self, input_dim: int, embed_dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.proj = Linear(input_dim, embed_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.proj(x)


class ConvBNReLU(nnx.Module):
  """mmcv ConvModule(k=1, norm=BN): `conv` (no bias, since a norm follows) → `bn` (eval: running stats) → ReLU."""

  def __init__(self, in_channels: int, out_channels: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.conv = Conv2d(in_channels, out_channels, 1, bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.bn = BatchNorm(out_channels, eps=1e-5, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x: Array) -> Array:
    return jax.nn.relu(self.bn(self.conv(x)))


class SegFormerHead(nnx.Module):
  """All-MLP decoder: linear_c{1..4} per token, c2..c4 resized bilinearly (align_corners=False) to c1's grid,
  concatenated in the order [c4, c3, c2, c1], then `linear_fuse` (1×1 conv, BN, ReLU). Dropout2d: identity."""

  def __init__(self, in_channels: Sequence[int] = MIT_B0.embed_dims, embedding_dim: int = 256, *,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    for i, c in enumerate(in_channels):
      setattr(self, f"linear_c{i + 1}", HeadMLP(c, embedding_dim, **kw))
    self.linear_fuse = ConvBNReLU(4 * embedding_dim, embedding_dim, **kw)

  def __call__(self, feats: Sequence[Array]) -> Array:
    """feats: the 4 NHWC stage outputs -> [B, H1, W1, embedding_dim] at c1's resolution."""
    if len(feats) != 4:
      raise ValueError(f"SegFormerHead expects 4 feature maps, got {len(feats)}")
    size = feats[0].shape[1:3]
    parts = []
    for i in (3, 2, 1, 0):
      y = getattr(self, f"linear_c{i + 1}")(feats[i])
      if i > 0:
        y = interpolate_bilinear(y, size, align_corners=False)
      parts.append(y)
    return self.linear_fuse(jnp.concatenate(parts, axis=-1))
