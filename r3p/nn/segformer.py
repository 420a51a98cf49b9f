"""SegFormer building blocks (MiT encoder + all-MLP head), NHWC, torch-named like the official state dict.

Semantics follow the MiT ("Mix Transformer") encoder of SegFormer as used by the Real3D-Portrait motion adapter
(MODEL.md §1.2, §3.4):
  * Overlapping patch embedding: Conv k×k (stride s, padding k//2) then LayerNorm (eps 1e-5).
  * Efficient self-attention: q from every token; k, v from a spatially reduced token grid (Conv with
    kernel = stride = sr_ratio, then LayerNorm eps 1e-5) when sr_ratio > 1. Scores are (q·kᵀ)·d^-½
    (scale applied after the product, as the reference does), softmax over keys.
  * Mix-FFN: Linear → depthwise 3×3 conv (padding 1) → exact (erf) GELU → Linear.
  * Block and stage norms: LayerNorm with the encoder's `norm_eps` (1e-6 for MiT-b*).
  * Dropout / DropPath are identities at inference and are not modelled.

Token grids are kept as NHWC maps [B, H, W, C] (row-major tokens, the same order as the reference's
`flatten(2).transpose(1, 2)`), so per-token Linear/LayerNorm act on the last axis and no reshapes are needed
between the attention, the depthwise conv and the stage outputs.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from r3p.nn.layers import BatchNorm, Conv2d, LayerNorm, Linear, default_precision, interpolate_bilinear

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


class OverlapPatchEmbed(nnx.Module):
  """Conv(k, stride, padding k//2) + LayerNorm(eps 1e-5). NHWC in, NHWC token grid out."""

  def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.proj = Conv2d(in_chans, embed_dim, patch_size, stride=stride, padding=patch_size // 2, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)
    self.norm = LayerNorm(embed_dim, eps=1e-5, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x: Array) -> Array:
    return self.norm(self.proj(x))


class Attention(nnx.Module):
  """Efficient multi-head self-attention with spatial reduction (`sr`, `norm` exist only if sr_ratio > 1)."""

  def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, sr_ratio: int = 1, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
    self.dim, self.num_heads, self.sr_ratio, self.dtype = dim, num_heads, sr_ratio, dtype
    self.scale = (dim // num_heads) ** -0.5
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q = Linear(dim, dim, bias=qkv_bias, **kw)
    self.kv = Linear(dim, 2 * dim, bias=qkv_bias, **kw)
    self.proj = Linear(dim, dim, **kw)
    if sr_ratio > 1:
      self.sr = Conv2d(dim, dim, sr_ratio, stride=sr_ratio, **kw)
      self.norm = LayerNorm(dim, eps=1e-5, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x: Array) -> Array:
    """x: token grid [B, H, W, C] -> [B, H, W, C]."""
    b, h, w, c = x.shape
    nh, hd = self.num_heads, c // self.num_heads
    q = self.q(x).reshape(b, h * w, nh, hd)
    kv_in = self.norm(self.sr(x)) if self.sr_ratio > 1 else x
    kv = self.kv(kv_in).reshape(b, -1, 2, nh, hd)  # channel = (k|v)·C + head·hd + i, as the reference splits it
    k, v = kv[:, :, 0], kv[:, :, 1]
    prec = default_precision(self.dtype)
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k, precision=prec) * jnp.asarray(self.scale, q.dtype)
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhnm,bmhd->bnhd", attn, v, precision=prec).reshape(b, h, w, c)
    return self.proj(out)


class DWConv(nnx.Module):
  """Depthwise 3×3 conv (padding 1, bias); the reference nests it as `dwconv.dwconv`."""

  def __init__(self, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dwconv = Conv2d(dim, dim, 3, padding=1, groups=dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.dwconv(x)


class MixFFN(nnx.Module):
  """fc1 → depthwise 3×3 → GELU (exact, erf) → fc2 (torch name: `Mlp`)."""

  def __init__(self, dim: int, hidden: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = Linear(dim, hidden, **kw)
    self.dwconv = DWConv(hidden, **kw)
    self.fc2 = Linear(hidden, dim, **kw)

  def __call__(self, x: Array) -> Array:
    return self.fc2(jax.nn.gelu(self.dwconv(self.fc1(x)), approximate=False))


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

  def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
               sr_ratio: int = 1, norm_eps: float = 1e-6, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.dtype = dtype
    self.norm1 = LayerNorm(dim, eps=norm_eps, dtype=dtype, param_dtype=param_dtype)
    self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, sr_ratio=sr_ratio, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)
    self.norm2 = LayerNorm(dim, eps=norm_eps, dtype=dtype, param_dtype=param_dtype)
    self.mlp = MixFFN(dim, int(dim * mlp_ratio), dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    x = x.astype(self.dtype)  # the residual stream is kept in the compute dtype
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


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
      setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(in_c, dims[i], patch, stride, rngs=rngs, **kw))
      setattr(self, f"block{i + 1}", nnx.List([
          Block(dims[i], cfg.num_heads[i], mlp_ratio=cfg.mlp_ratios[i], qkv_bias=cfg.qkv_bias,
                sr_ratio=cfg.sr_ratios[i], norm_eps=cfg.norm_eps, rngs=rngs, **kw)
          for _ in range(cfg.depths[i])]))
      setattr(self, f"norm{i + 1}", LayerNorm(dims[i], eps=cfg.norm_eps, **kw))

  def stage(self, i: int, x: Array) -> Array:
    """Stage i (0-based): NHWC input (image or previous stage output) -> NHWC stage output."""
    x = getattr(self, f"patch_embed{i + 1}")(x)
    for blk in getattr(self, f"block{i + 1}"):
      x = blk(x)
    return getattr(self, f"norm{i + 1}")(x)

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
