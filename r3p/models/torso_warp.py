"""Torso warp model v2 (`superresolution.torso_model` = `WarpBasedTorsoModelMediaPipe('standard')`), Flax NNX.

Reference: facev2v_warp/model2.py + network2.py + layers.py of Real3D-Portrait (MODEL.md §1.6, §2.12). The torso
of a source image is encoded once into a 3-D appearance volume; per frame, a motion-field U-Net turns the motion of
4 landmarks (0, 8, 16, 27) plus the rendered head (rgb_256, weights_256) into a dense 3-D deformation and two
occlusion maps; the generator warps the volume and decodes the torso image, and `occlusion_2_predictor` refines
the person alpha at 256².

Layouts (channels-last): images NHWC, feature volumes NDHWC with D = 16 depth slices. A torch view
`[B, C*D, H, W] <-> [B, C, D, H, W]` (channel index c·16 + d) is a reshape of the channel axis to (C, D) plus a
transpose here. Keypoints are [B, K, 3] (x, y, z) in [-1, 1], x → W, y → H, z → D as in torch's grid_sample.

Weights: child names equal the torch state_dict prefixes below `superresolution.torso_model.`. The generator's
spectral-norm convolutions hold effective weights: fold the torch dict first, e.g.

    load_state_dict(model, fold_spectral_norm(sd), prefix="superresolution.torso_model.", unused=UNUSED_KEYS)

Random init is slow on CPU (≈30 s CPU: one RNG compile per parameter shape). To load a checkpoint, build the
model abstractly instead, `nnx.eval_shape(lambda: WarpBasedTorsoModelMediaPipe(rngs=nnx.Rngs(0)))`, give every
variable a concrete placeholder (`var.set_value(np.zeros(var.shape, var.dtype))`) and load the weights.

Cost at B=1 (fp32): precompute ≈ 33 GMAC, per-frame forward ≈ 150 GMAC (the 7×7×7 `tgt_head_fuser` alone is 64).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from r3p.nn.conv3d import (Conv3d, ConvBlock, DownBlock, ReLU, ResBlock, Sigmoid, UpBlock, dilate)
from r3p.nn.grid_sample import grid_sample_3d
from r3p.nn.layers import Conv2d, interpolate_bilinear

Array = jax.Array

# Present in the state dict (below the prefix) but not used by any computation that reaches the outputs:
# - BatchNorm `num_batches_tracked` counters are loaded (they are BatchStats), so nothing is listed for them;
# - `motion_field_estimator.occlusion_conv` IS used: its map is returned as aux['occlusion'] (the generator ignores
#   it, but the fixture compares it), so it is loaded too.
# The spectral-norm buffers `weight_orig/weight_u/weight_v` disappear in `fold_spectral_norm`. Nothing is left.
UNUSED_KEYS: tuple[str, ...] = ()

TORSO_KP_INDEX = (0, 8, 16, 27)  # torso_kp_num = 4: jaw ends, chin and nose bridge of the 68 landmarks
DEPTH = 16          # D of every feature volume
FEAT_C = 32         # appearance channels per depth slice
KP_VARIANCE = 0.01  # gaussian heatmap variance in normalised units
GRAD_SCALE = 0.1    # `v*0.1 + v.detach()*0.9` in the reference (an identity up to rounding at eval)


def _to_volume(x: Array, c: int, d: int) -> Array:
  """torch `view(B, C, D, H, W)` of a [B, C*D, H, W] map: NHWC [B,H,W,C*D] -> NDHWC [B,D,H,W,C]."""
  b, h, w, _ = x.shape
  return x.reshape(b, h, w, c, d).transpose(0, 4, 1, 2, 3)


def _from_volume(x: Array) -> Array:
  """torch `view(B, C*D, H, W)` of a [B, C, D, H, W] volume: NDHWC [B,D,H,W,C] -> NHWC [B,H,W,C*D]."""
  b, d, h, w, c = x.shape
  return x.transpose(0, 2, 3, 4, 1).reshape(b, h, w, c * d)


def coordinate_grid_3d(d: int, h: int, w: int) -> Array:
  """`make_coordinate_grid_3d`: [D,H,W,3] with values 2·(i/(n−1)) − 1, last axis ordered (x=W, y=H, z=D)."""
  def axis(n):
    return 2.0 * (jnp.arange(n, dtype=jnp.float32) / jnp.float32(n - 1)) - 1.0
  z, y, x = jnp.meshgrid(axis(d), axis(h), axis(w), indexing="ij")
  return jnp.stack([x, y, z], axis=-1)


def _gaussian_3d(kp: Array, grid: Array) -> Array:
  """`kp2gaussian_3d`: kp [B,K,3], grid [D,H,W,3] -> [B,K,D,H,W] = exp(−½‖g − kp‖² / 0.01)."""
  diff = grid[None, None] - kp[:, :, None, None, None, :]
  sq = diff * diff
  ssum = (sq[..., 0] + sq[..., 1]) + sq[..., 2]
  return jnp.exp(-0.5 * ssum / KP_VARIANCE)


def _grad_scale_identity(v: Array) -> Array:
  """`v*0.1 + v.detach()*0.9`: the value is the identity up to the reference's rounding (≈28 % of float32 values
  move by 1 ulp, reproduced), the gradient is ×0.1 (the official scaling of the deformation/occlusion grads in
  training; TRAINING §1.4, §6.6)."""
  return v * jnp.asarray(GRAD_SCALE, v.dtype) + jax.lax.stop_gradient(v) * jnp.asarray(1.0 - GRAD_SCALE, v.dtype)


class AppearanceFeatureExtractor(nnx.Module):
  """[B,256,256,in_dim] -> appearance volume [B,16,64,64,32] (network2.AppearanceFeatureExtractor)."""

  def __init__(self, in_dim: int = 5, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    down_seq = (64, 128, 256)
    self.in_conv = ConvBlock("CNA", in_dim, down_seq[0], 7, 1, 3, dim=2, **kw)
    self.down = nnx.List([DownBlock(down_seq[i], down_seq[i + 1], dim=2, **kw) for i in range(len(down_seq) - 1)])
    self.mid_conv = Conv2d(down_seq[-1], FEAT_C * DEPTH, 1, **kw)
    self.res = nnx.List([ResBlock(FEAT_C, dim=3, **kw) for _ in range(6)])

  def __call__(self, x: Array) -> Array:
    x = self.in_conv(x)
    for m in self.down:
      x = m(x)
    x = _to_volume(self.mid_conv(x), FEAT_C, DEPTH)
    for m in self.res:
      x = m(x)
    return x


class MotionFieldEstimator(nnx.Module):
  """network2.MotionFieldEstimator('standard', input_channels=34, num_keypoints=4).

  `compress` (source only) is split from the per-frame part so the compressed source can be cached.
  """

  def __init__(self, input_channels: int = FEAT_C + 2, num_keypoints: int = 4, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.num_keypoints, self.dtype = num_keypoints, dtype
    down_seq = ((num_keypoints + 1) * 5, 64, 128, 256, 512, 1024)
    up_seq = (1024, 512, 256, 128, 64, 32)
    hid = 32
    self.compress = Conv3d(input_channels, 4, 1, **kw)
    self.down = nnx.List([DownBlock(down_seq[i], down_seq[i + 1], dim=3, **kw) for i in range(5)])
    self.up = nnx.List([UpBlock(up_seq[i], up_seq[i + 1], dim=3, **kw) for i in range(5)])
    self.tgt_head_encoder = nnx.List([ConvBlock("CNA", 3 + 1, hid, 7, 1, 3, dim=2, **kw)]
                                     + [ResBlock(hid, dim=2, **kw) for _ in range(3)])
    self.tgt_head_fuser = Conv3d(hid + down_seq[0] + up_seq[-1], hid, 7, padding=3, **kw)
    self.mask_conv = Conv3d(hid, num_keypoints + 1, 7, padding=3, **kw)
    self.occlusion_conv = Conv2d(hid * DEPTH, 1, 7, padding=3, **kw)
    self.occlusion_conv2 = Conv2d(hid * DEPTH, 1, 7, padding=3, **kw)

  def sparse_motions(self, kp_s: Array, kp_d: Array, d: int, h: int, w: int) -> tuple[Array, Array]:
    """Heatmaps [B,K+1,D,H,W] (slot 0 = zeros) and motions [B,K+1,D,H,W,3] (slot 0 = identity); Rs = Rd = I."""
    grid = coordinate_grid_3d(d, h, w)
    kp_s, kp_d = kp_s.astype(jnp.float32), kp_d.astype(jnp.float32)
    b = kp_s.shape[0]
    hm = _gaussian_3d(kp_d, grid) - _gaussian_3d(kp_s, grid)
    hm = jnp.concatenate([jnp.zeros((b, 1, d, h, w), jnp.float32), hm], axis=1)
    # (grid − kp_d)·Jᵀ + kp_s with J = Rs·Rd⁻¹ = I, which is exact, so the matmul is dropped
    moved = (grid[None, None] - kp_d[:, :, None, None, None, :]) + kp_s[:, :, None, None, None, :]
    ident = jnp.broadcast_to(grid[None, None], (b, 1, d, h, w, 3))
    return hm, jnp.concatenate([ident, moved], axis=1)

  def __call__(self, fs_c: Array, kp_s: Array, kp_d: Array, tgt_head_img: Array,
               tgt_head_weights: Array) -> tuple[Array, Array, Array]:
    """fs_c [B,D,H,W,4] (compressed source), kp [B,K,3], head rgb [B,256,256,3], weights [B,256,256,1] ->
    deformation [B,D,H,W,3] (fp32), occlusion [B,H,W,1], occlusion_2 [B,H,W,1]."""
    b, d, h, w, c4 = fs_c.shape
    k1 = self.num_keypoints + 1
    hm, motions = self.sparse_motions(kp_s, kp_d, d, h, w)
    # one grid_sample of the shared source over the K+1 motions stacked along the output depth axis
    deformed = grid_sample_3d(fs_c, motions.reshape(b, k1 * d, h, w, 3), padding_mode="zeros",
                              align_corners=True).reshape(b, k1, d, h, w, c4)
    # torch cat(dim=2).view(B, (K+1)*5, D, H, W): channel k·5 + j, j = 0 heatmap, 1..4 deformed features
    inp = jnp.concatenate([hm.astype(deformed.dtype)[..., None], deformed], axis=-1)  # [B,K+1,D,H,W,5]
    inp = inp.transpose(0, 2, 3, 4, 1, 5).reshape(b, d, h, w, k1 * (1 + c4)).astype(self.dtype)
    y = inp
    for m in self.down:
      y = m(y)
    for m in self.up:
      y = m(y)
    x = jnp.concatenate([inp, y], axis=-1)

    th = jnp.concatenate([tgt_head_img, tgt_head_weights], axis=-1).astype(self.dtype)
    th = interpolate_bilinear(th, (128, 128))
    for m in self.tgt_head_encoder:
      th = m(th)
    th = interpolate_bilinear(th, (h, w))
    # torch concatenates th repeated over the D slices; its share of the 7×7×7 conv is done once in 2-D
    # (≈23 of the fuser's 64 GMAC): see Conv3d's `depth_constant`.
    x = self.tgt_head_fuser(x, depth_constant=th)

    mask = jax.nn.softmax(self.mask_conv(x).astype(jnp.float32), axis=-1)  # [B,D,H,W,K+1]
    deformation = motions[:, 0] * mask[..., 0:1]
    for k in range(1, k1):
      deformation = deformation + motions[:, k] * mask[..., k:k + 1]

    x2 = _from_volume(x)
    occlusion = jax.nn.sigmoid(self.occlusion_conv(x2))
    occlusion_2 = jax.nn.sigmoid(self.occlusion_conv2(x2))
    return deformation, occlusion, occlusion_2


class Generator(nnx.Module):
  """network2.Generator('standard'): warp the appearance volume, decode to the torso image (spectral norm folded)."""

  def __init__(self, input_channels: int = FEAT_C, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    up_seq = (256, 128, 64)
    self.in_conv = ConvBlock("CNA", input_channels * DEPTH, up_seq[0], 3, 1, 1, dim=2, nonlinearity="leakyrelu",
                             **kw)
    self.mid_conv = Conv2d(up_seq[0], up_seq[0], 1, **kw)
    self.res = nnx.List([ResBlock(up_seq[0], dim=2, **kw) for _ in range(6)])
    self.up = nnx.List([UpBlock(up_seq[i], up_seq[i + 1], dim=2, **kw) for i in range(len(up_seq) - 1)])
    self.out_conv = Conv2d(up_seq[-1], 3, 7, padding=3, **kw)

  def __call__(self, fs: Array, deformation: Array, occlusion: Array | None = None) -> tuple[Array, Array]:
    """fs [B,D,H,W,C], deformation [B,D,H,W,3] -> (rgb [B,4H,4W,3], hid [B,4H,4W,64]). `occlusion` is ignored,
    as in the reference."""
    del occlusion
    warped = grid_sample_3d(fs, deformation, padding_mode="border", align_corners=True)
    x = self.in_conv(_from_volume(warped))
    x = self.mid_conv(x)
    for m in self.res:
      x = m(x)
    for m in self.up:
      x = m(x)
    return self.out_conv(x), x


class WarpBasedTorsoModelMediaPipe(nnx.Module):
  """The torso model of the v2 super-resolution (MODEL.md §2.12); see the module docstring."""

  def __init__(self, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dtype = dtype
    self.appearance_extractor = AppearanceFeatureExtractor(5, **kw)  # torso_inp_mode 'rgb_alpha': rgb + 2 seg
    self.motion_field_estimator = MotionFieldEstimator(FEAT_C + 2, len(TORSO_KP_INDEX), **kw)
    self.deform_based_generator = Generator(FEAT_C, **kw)
    self.occlusion_2_predictor = nnx.List([
        Conv2d(64 + 1, 32, 3, padding=1, **kw), ReLU(), Conv2d(32, 32, 3, padding=1, **kw), ReLU(),
        Conv2d(32, 1, 3, padding=1, **kw), Sigmoid()])

  def precompute(self, ref_torso_rgb_256: Array, segmap: Array) -> dict[str, Array]:
    """Source-only work, once per source image.

    Args:
      ref_torso_rgb_256: [B,256,256,3] torso image in [-1,1] (AA-downsampled from 512 by the caller).
      segmap: [B,512,512,6] one-hot MediaPipe segmentation (class 2 body skin, 4 clothes are used).
    Returns:
      feats [B,16,64,64,32] masked appearance volume, fs_compressed [B,16,64,64,4], motion_in [B,16,64,64,34],
      seg64 [B,64,64,2], torso_mask [B,64,64,1].
    """
    if ref_torso_rgb_256.ndim != 4 or ref_torso_rgb_256.shape[1:] != (256, 256, 3):
      raise ValueError(f"ref_torso_rgb_256 must be [B,256,256,3], got {ref_torso_rgb_256.shape}")
    if segmap.ndim != 4 or segmap.shape[-1] != 6:
      raise ValueError(f"segmap must be [B,H,W,6] (NHWC one-hot), got {segmap.shape}")
    seg = segmap[..., jnp.array([2, 4])].astype(jnp.float32)
    seg_in = interpolate_bilinear(seg, ref_torso_rgb_256.shape[1:3])
    x = jnp.concatenate([ref_torso_rgb_256.astype(jnp.float32), seg_in], axis=-1).astype(self.dtype)
    feats = self.appearance_extractor(x)
    b, d, h, w, _ = feats.shape
    seg64 = interpolate_bilinear(seg, (h, w))
    torso_mask = dilate(seg64[..., 0:1] + seg64[..., 1:2], 7)
    feats = feats * torso_mask[:, None].astype(feats.dtype)
    motion_in = jnp.concatenate(
        [feats, jnp.broadcast_to(seg64[:, None].astype(feats.dtype), (b, d, h, w, 2))], axis=-1)
    fs_c = self.motion_field_estimator.compress(motion_in)
    return dict(feats=feats, fs_compressed=fs_c, motion_in=motion_in, seg64=seg64, torso_mask=torso_mask)

  def forward_intermediates(self, src_cache: dict, kp_s: Array, kp_d: Array, rgb_256: Array,
                            weights_256: Array) -> dict[str, Array]:
    """The per-frame forward, returning every intermediate that the reference exposes at a module boundary."""
    if kp_s.ndim != 3 or kp_s.shape[-1] != 3 or kp_s.shape[1] <= max(TORSO_KP_INDEX):
      raise ValueError(f"kp_s must be [B,68,3], got {kp_s.shape}")
    if kp_d.shape != kp_s.shape:
      raise ValueError(f"kp_d must have the shape of kp_s {kp_s.shape}, got {kp_d.shape}")
    idx = jnp.array(TORSO_KP_INDEX)
    kp_src, kp_drv = kp_s[:, idx].astype(jnp.float32), kp_d[:, idx].astype(jnp.float32)
    deformation, occlusion, occlusion_2_low = self.motion_field_estimator(
        src_cache["fs_compressed"], kp_src, kp_drv, rgb_256, weights_256)
    deformation = _grad_scale_identity(deformation)
    occlusion = _grad_scale_identity(occlusion)
    occlusion_2_low = _grad_scale_identity(occlusion_2_low)
    rgb, hid = self.deform_based_generator(src_cache["feats"], deformation, occlusion)
    occ_in = jnp.concatenate(
        [hid, interpolate_bilinear(occlusion_2_low, hid.shape[1:3]).astype(hid.dtype)], axis=-1)
    y = occ_in
    for m in self.occlusion_2_predictor:
      y = m(y)
    return dict(rgb_torso=rgb, occlusion=occlusion, occlusion_2=y, occlusion_2_low=occlusion_2_low,
                deformation=deformation, deformed_torso_hid=hid, occlusion_2_input=occ_in,
                kp_src=kp_src, kp_drv=kp_drv)

  def __call__(self, src_cache: dict, kp_s: Array, kp_d: Array, rgb_256: Array,
               weights_256: Array) -> tuple[Array, dict[str, Array]]:
    """Per-frame torso: (rgb_torso [B,256,256,3], aux) with aux = occlusion [B,64,64,1], occlusion_2
    [B,256,256,1], deformed_torso_hid [B,256,256,64], kp_src / kp_drv [B,4,3]."""
    r = self.forward_intermediates(src_cache, kp_s, kp_d, rgb_256, weights_256)
    aux = {k: r[k] for k in ("occlusion", "occlusion_2", "deformed_torso_hid", "kp_src", "kp_drv")}
    return r["rgb_torso"], aux
