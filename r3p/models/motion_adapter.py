"""SECC motion adapter: `SegFormerSECC2PlaneBackbone` (state_dict prefix `secc_img2plane_backbone.`) and the fusion
of its planes with the canonical tri-plane (MODEL.md §1.2, §2.3).

    secc [B,512,512,9] = cat(cond_cano, cond_src, cond_tgt) on channels, values in [-1, 1]
      → prenet (StyleGAN2 Conv2dLayer 9→3, k=1, weight gain 1/√(9·1), linear)     [B,512,512,3]
      → mix_vit (MiT-b0)                    [B,128,128,32] [B,64,64,64] [B,32,32,160] [B,16,16,256]
      → fuse_head (SegFormer all-MLP head)  [B,128,128,256]
      → to_plane_cnn (3×[conv3×3 + LeakyReLU 0.01], ×2 bilinear align_corners=True, conv3×3 → 96)
                                            [B,256,256,96]
      → r3p.models.planes.to_planes         [B,3,256,256,32]  (official [B,3,32,256,256] + the three flips)

Precomputation over a video: only `cond_tgt` changes per frame. The prenet is a 1×1 linear map, so its output is
W_cano·cano + W_src·src + W_tgt·tgt + b and the first two terms are constant over a video. The reference sums the
9 products in one accumulation, though, so a split sum is equal only up to float32 rounding (measured ≤ ~5e-7 on
the b1 fixture, see tests/models/motion_adapter_test.py), not bit for bit; everything after the prenet mixes all
channels non-linearly. This module therefore always runs the whole branch on the 9-channel input (parity mode).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.convert.torch_to_nnx import load_state_dict, model_variables
from r3p.models.planes import to_planes
from r3p.nn.layers import Conv2d, default_precision, interpolate_bilinear, param
from r3p.nn.segformer import MIT_B0, MiTConfig, MixVisionTransformer, SegFormerHead

Array = jax.Array

SECC_CHANNELS = 9  # pncc_cond_mode = cano_src_tgt
PLANE_CHANNELS = 32  # triplane_hid_dim
FUSION_MODES = ("add",)

# Keys below `secc_img2plane_backbone.` that the checkpoint holds but inference never reads.
UNUSED_KEYS = (
    # StyleGAN2 Conv2dLayer registers its 4×4 FIR filter even when it neither up- nor down-samples (k=1 prenet).
    "prenet.resample_filter",
)


class EqualizedConv2d(nnx.Module):
  """StyleGAN2 `Conv2dLayer` with up = down = 1 and linear activation (the prenet).

  The stored `weight` is the raw parameter; the effective kernel weight·(1/√(in·k²)) is formed at run time in
  float32, as the reference does (gain folded before the conv, bias added after, activation gain 1, no clamp).
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype, self.padding = dtype, kernel_size // 2
    self.weight_gain = 1.0 / np.sqrt(in_channels * kernel_size ** 2)
    w = jax.random.normal(rngs.params(), (kernel_size, kernel_size, in_channels, out_channels), param_dtype)
    self.weight = param(w, "conv", (None, None, "embed", "mlp"))
    self.bias = param(jnp.zeros((out_channels,), param_dtype), "none", ("mlp",))

  def __call__(self, x: Array) -> Array:
    w = self.weight[...] * jnp.asarray(self.weight_gain, self.weight[...].dtype)
    p = self.padding
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), w.astype(self.dtype), (1, 1), ((p, p), (p, p)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=default_precision(self.dtype))
    return y + self.bias[...].astype(self.dtype)


class LeakyReLU(nnx.Module):
  """Parameter-free Sequential entry (keeps the torch indices of `to_plane_cnn`)."""

  def __init__(self, negative_slope: float = 0.01):
    self.negative_slope = negative_slope

  def __call__(self, x: Array) -> Array:
    return jax.nn.leaky_relu(x, self.negative_slope)


class UpsamplingBilinear2d(nnx.Module):
  """torch.nn.UpsamplingBilinear2d: bilinear with align_corners=True (MODEL.md §3.3)."""

  def __init__(self, scale_factor: int = 2):
    self.scale_factor = scale_factor

  def __call__(self, x: Array) -> Array:
    h, w = x.shape[1:3]
    return interpolate_bilinear(x, (h * self.scale_factor, w * self.scale_factor), align_corners=True)


class SegFormerSECC2PlaneBackbone(nnx.Module):
  """SECC → tri-plane offsets. Children mirror the torch keys: prenet, mix_vit, fuse_head, to_plane_cnn.{0..7}."""

  def __init__(self, *, mit: MiTConfig = MIT_B0, in_channels: int = SECC_CHANNELS, out_channels: int = 96,
               embedding_dim: int = 256, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if out_channels % 3:
      raise ValueError(f"out_channels must be 3·plane channels, got {out_channels}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.in_channels, self.dtype = in_channels, dtype
    self.prenet = EqualizedConv2d(in_channels, mit.in_chans, 1, **kw)
    self.mix_vit = MixVisionTransformer(mit, **kw)
    self.fuse_head = SegFormerHead(mit.embed_dims, embedding_dim, **kw)
    e = embedding_dim
    self.to_plane_cnn = nnx.List([
        Conv2d(e, e, 3, padding=1, **kw), LeakyReLU(0.01),
        Conv2d(e, e, 3, padding=1, **kw), LeakyReLU(0.01),
        Conv2d(e, e, 3, padding=1, **kw), LeakyReLU(0.01),
        UpsamplingBilinear2d(2),
        Conv2d(e, out_channels, 3, padding=1, **kw),
    ])

  def _check(self, secc: Array) -> None:
    if secc.ndim != 4 or secc.shape[-1] != self.in_channels:
      raise ValueError(f"secc must be NHWC [B,H,W,{self.in_channels}] (cat of cano, src, tgt SECC), "
                       f"got shape {tuple(secc.shape)}")
    if secc.shape[1] % 32 or secc.shape[2] % 32:
      raise ValueError(f"secc height/width must be multiples of 32 (MiT strides), got {tuple(secc.shape[1:3])}")

  def intermediates(self, secc: Array) -> dict:
    """Every module boundary (NHWC): prenet, mix_vit (list of 4), fuse_head, to_plane_cnn, planes."""
    self._check(secc)
    out = {"prenet": self.prenet(secc)}
    out["mix_vit"] = self.mix_vit(out["prenet"])
    out["fuse_head"] = self.fuse_head(out["mix_vit"])
    x = out["fuse_head"]
    for layer in self.to_plane_cnn:
      x = layer(x)
    out["to_plane_cnn"] = x
    out["planes"] = to_planes(x)
    return out

  def __call__(self, secc: Array) -> Array:
    """secc NHWC [B,H,W,9] in [-1,1] -> SECC planes [B,3,H/2,W/2,32] (r3p plane layout)."""
    return self.intermediates(secc)["planes"]


def from_state_dict(sd, *, prefix: str = "secc_img2plane_backbone.", dtype=jnp.float32, param_dtype=jnp.float32,
                    **kwargs) -> SegFormerSECC2PlaneBackbone:
  """Build the branch straight from official weights ({torch key: array}, torch layouts), strictly.

  The module is constructed abstractly (`nnx.eval_shape`, no random init: that costs ~10 s of small eager ops on
  CPU) and every variable is then filled by `load_state_dict`; keys of `UNUSED_KEYS` are skipped.
  """
  m = nnx.eval_shape(lambda: SegFormerSECC2PlaneBackbone(dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0),
                                                         **kwargs))
  variables = model_variables(m)
  for var in variables.values():
    s = var.get_value()
    var.set_value(np.zeros(s.shape, s.dtype))
  load_state_dict(m, sd, prefix=prefix, unused=UNUSED_KEYS)
  for var in variables.values():
    var.set_value(jnp.asarray(var.get_value()))
  left = [jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(m))
          if isinstance(v, jax.ShapeDtypeStruct)]
  if left:
    raise RuntimeError(f"from_state_dict: variables left uninitialised: {left[:3]}")
  return m


def make_secc_input(cond_cano: Array, cond_src: Array, cond_tgt: Array) -> Array:
  """The branch input: NHWC [B,H,W,3] ×3 -> [B,H,W,9] in the reference's channel order (cano, src, tgt)."""
  shapes = {tuple(c.shape) for c in (cond_cano, cond_src, cond_tgt)}
  if len(shapes) != 1 or cond_cano.ndim != 4 or cond_cano.shape[-1] != 3:
    raise ValueError(f"cond_cano/src/tgt must all be NHWC [B,H,W,3], got {sorted(shapes)}")
  return jnp.concatenate([cond_cano, cond_src, cond_tgt], axis=-1)


def fuse_planes(cano_planes: Array, secc_planes: Array, mode: str = "add") -> Array:
  """Fuse canonical and SECC tri-planes (`phase1_plane_fusion_mode`; the released model uses 'add')."""
  if mode not in FUSION_MODES:
    raise NotImplementedError(f"plane fusion mode {mode!r} is not implemented (supported: {FUSION_MODES})")
  if cano_planes.shape != secc_planes.shape:
    raise ValueError(f"plane shapes differ: cano {tuple(cano_planes.shape)} vs secc {tuple(secc_planes.shape)}")
  return cano_planes + secc_planes
