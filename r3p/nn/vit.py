"""SegFormer-style transformer blocks (efficient self-attention + Mix-FFN) and pixel ops, NHWC / token layout.

Names mirror the official `segformer/base.py` (`OverlapPatchEmbed.{proj,norm}`, `Block.{norm1,attn,norm2,mlp}`,
`Attention.{q,kv,proj,sr,norm}`, `Mlp.{fc1,dwconv.dwconv,fc2}`) so NNX paths are torch state_dict keys.

Tokens are [B, N, C] with N = H·W row-major (torch `flatten(2).transpose(1, 2)` of an NCHW map), i.e. exactly an
NHWC map reshaped to [B, H·W, C]; going back is a reshape, no transpose.

Numerics: attention logits and softmax are always accumulated/computed in float32 (also in bf16 mode); the
attention-weighted sum of V accumulates in float32 and is cast back to the compute dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from r3p.nn.layers import Conv2d, LayerNorm, Linear, default_precision, interpolate_bilinear
from r3p.nn import numerics

Array = jax.Array

# Attention logits are materialised per query chunk; this bounds one chunk's fp32 logits to 64 MiB (the tri-plane
# predictor has 16384 queries x 4096 keys x 4 heads = 1 GiB per image otherwise). Measured on 2 CPU cores, 64 MiB
# chunks are as fast as (slightly faster than) one pass.
MAX_LOGITS_ELEMENTS = 1 << 24


def pixel_shuffle(x: Array, r: int = 2) -> Array:
  """torch.nn.PixelShuffle(r) on NHWC: output channel c at sub-pixel (i, j) is input channel c·r² + i·r + j."""
  b, h, w, c = x.shape
  if c % (r * r):
    raise ValueError(f"pixel_shuffle: channels {c} not divisible by {r * r}")
  oc = c // (r * r)
  x = x.reshape(b, h, w, oc, r, r).transpose(0, 1, 4, 2, 5, 3)  # b, h, i, w, j, c
  return x.reshape(b, h * r, w * r, oc)


def _softmax_attention(q: Array, k: Array, v: Array, scale: float, precision) -> Array:
  """q [B, h, n, d], k/v [B, h, m, d] -> [B, h, n, d]; logits·scale and softmax in fp32, in torch's order
  ((q @ kᵀ) * scale, softmax over keys, then @ v)."""
  logits = jnp.einsum("bhnd,bhmd->bhnm", q, k, precision=precision, preferred_element_type=jnp.float32)
  p = numerics.softmax(logits * jnp.float32(scale), axis=-1)
  out = jnp.einsum("bhnm,bhmd->bhnd", p.astype(v.dtype), v, precision=precision,
                   preferred_element_type=jnp.float32)
  return out.astype(v.dtype)


def multi_head_attention(q: Array, k: Array, v: Array, num_heads: int, scale: float, *, precision=None,
                         max_logits_elements: int = MAX_LOGITS_ELEMENTS) -> Array:
  """Softmax attention on [B, N, C] queries and [B, M, C] keys/values, heads = contiguous channel blocks
  (channel = head·d + i, as torch's reshape(B, N, heads, C // heads)). Returns [B, N, C].

  When B·heads·N·M exceeds `max_logits_elements` the queries are processed in equal chunks under `lax.map`
  (softmax rows are independent, so the result is the same as one pass).
  """
  b, n, c = q.shape
  m = k.shape[1]
  d = c // num_heads
  precision = precision or default_precision(q.dtype)
  # Head-major [B, h, N, d] layout: batched matmuls over (B, h) run faster on CPU than the [B, N, h, d] form.
  q = q.reshape(b, n, num_heads, d).transpose(0, 2, 1, 3)
  k = k.reshape(b, m, num_heads, d).transpose(0, 2, 1, 3)
  v = v.reshape(b, m, num_heads, d).transpose(0, 2, 1, 3)
  chunks = 1
  while b * num_heads * (n // chunks) * m > max_logits_elements and n % (chunks * 2) == 0:
    chunks *= 2
  if chunks == 1:
    out = _softmax_attention(q, k, v, scale, precision)
  else:
    qc = q.reshape(b, num_heads, chunks, n // chunks, d).transpose(2, 0, 1, 3, 4)
    out = jax.lax.map(lambda qi: _softmax_attention(qi, k, v, scale, precision), qc)
    out = out.transpose(1, 2, 0, 3, 4).reshape(b, num_heads, n, d)
  out = out.transpose(0, 2, 1, 3)  # [B, N, h, d]: channel = head·d + i, torch's transpose(1, 2).reshape
  return out.reshape(b, n, c)


class OverlapPatchEmbed(nnx.Module):
  """Conv(k=patch, stride, padding=patch//2) then LayerNorm over channels. NHWC in; tokens [B, H'·W', C] out."""

  def __init__(self, in_chans: int, embed_dim: int, *, patch_size: int = 3, stride: int = 2, eps: float = 1e-5,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.proj = Conv2d(in_chans, embed_dim, patch_size, stride=stride, padding=patch_size // 2, rngs=rngs, **kw)
    self.norm = LayerNorm(embed_dim, eps=eps, **kw)

  def __call__(self, x: Array) -> tuple[Array, int, int]:
    y = self.proj(x)
    b, h, w, c = y.shape
    return self.norm(y.reshape(b, h * w, c)), h, w


class Attention(nnx.Module):
  """SegFormer efficient self-attention. With sr_ratio > 1, K/V come from a strided conv (k = s = sr_ratio) of
  the token grid followed by LayerNorm `norm`. Scale = head_dim^-0.5."""

  def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, sr_ratio: int = 1, sr_eps: float = 1e-5,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.num_heads, self.sr_ratio = num_heads, sr_ratio
    self.scale = float((dim // num_heads) ** -0.5)
    self.q = Linear(dim, dim, bias=qkv_bias, rngs=rngs, **kw)
    self.kv = Linear(dim, 2 * dim, bias=qkv_bias, rngs=rngs, **kw)
    self.proj = Linear(dim, dim, rngs=rngs, **kw)
    if sr_ratio > 1:
      self.sr = Conv2d(dim, dim, sr_ratio, stride=sr_ratio, rngs=rngs, **kw)
      self.norm = LayerNorm(dim, eps=sr_eps, **kw)
    else:
      self.sr = self.norm = None

  def __call__(self, x: Array, h: int, w: int) -> Array:
    b, n, c = x.shape
    q = self.q(x)
    if self.sr is not None:
      xs = self.sr(x.reshape(b, h, w, c))
      xs = self.norm(xs.reshape(b, -1, c))
    else:
      xs = x
    kv = self.kv(xs)
    # torch: kv.reshape(B, M, 2, heads, d): K = first C outputs, V = last C.
    k, v = kv[..., :c], kv[..., c:]
    return self.proj(multi_head_attention(q, k, v, self.num_heads, self.scale))


class DWConv(nnx.Module):
  """Depthwise 3x3 conv (padding 1, bias) on the token grid; torch key `dwconv.weight` [C, 1, 3, 3].

  Computed as 9 shifted multiply-adds (one fused elementwise loop, accumulated in fp32) rather than a grouped
  `conv_general_dilated`, which XLA:CPU runs ~6x slower for C = 2048 groups.
  """

  def __init__(self, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.dwconv = Conv2d(dim, dim, 3, padding=1, groups=dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: Array, h: int, w: int) -> Array:
    b, n, c = x.shape
    w3 = self.dwconv.weight[...].astype(self.dtype).astype(jnp.float32)  # [3, 3, 1, C]
    xp = jnp.pad(x.reshape(b, h, w, c).astype(self.dtype).astype(jnp.float32), ((0, 0), (1, 1), (1, 1), (0, 0)))
    acc = self.dwconv.bias[...].astype(self.dtype).astype(jnp.float32)
    for i in range(3):  # fixed 9-tap unroll: XLA fuses it into one elementwise pass
      for j in range(3):
        acc = acc + xp[:, i:i + h, j:j + w, :] * w3[i, j, 0]
    return acc.astype(self.dtype).reshape(b, n, c)


class Mlp(nnx.Module):
  """Mix-FFN: fc1 -> depthwise 3x3 on the token grid -> GELU (exact, erf) -> fc2."""

  def __init__(self, dim: int, hidden: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = Linear(dim, hidden, **kw)
    self.dwconv = DWConv(hidden, **kw)
    self.fc2 = Linear(hidden, dim, **kw)

  def __call__(self, x: Array, h: int, w: int) -> Array:
    y = self.dwconv(self.fc1(x), h, w)
    return self.fc2(jax.nn.gelu(y, approximate=False))


class Block(nnx.Module):
  """x + Attn(LN1(x)), then x + MixFFN(LN2(x)). DropPath/Dropout are identities at inference.

  eps: LayerNorm eps of norm1/norm2 (1e-5 in the I2P ViTs, 1e-6 in MiT); sr_eps: of the sr LayerNorm (1e-5).
  """

  def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
               sr_ratio: int = 1, eps: float = 1e-5, sr_eps: float = 1e-5, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.dtype = dtype
    self.norm1 = LayerNorm(dim, eps=eps, **kw)
    self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, sr_ratio=sr_ratio, sr_eps=sr_eps, rngs=rngs, **kw)
    self.norm2 = LayerNorm(dim, eps=eps, **kw)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs, **kw)

  def __call__(self, x: Array, h: int, w: int) -> Array:
    x = x.astype(self.dtype)  # the residual stream runs in the compute dtype
    x = x + self.attn(self.norm1(x), h, w)
    return x + self.mlp(self.norm2(x), h, w)


def upsample_bilinear_align_corners(x: Array, scale: int = 2) -> Array:
  """torch.nn.UpsamplingBilinear2d(scale_factor=scale) on NHWC: align_corners=True, output size in·scale."""
  _, h, w, _ = x.shape
  return interpolate_bilinear(x, (h * scale, w * scale), align_corners=True)


__all__ = ["pixel_shuffle", "multi_head_attention", "OverlapPatchEmbed", "Attention", "DWConv", "Mlp", "Block",
           "upsample_bilinear_align_corners"]
