"""Stage 3, HTB-SR (head–torso–background super-resolution; TRAINING §1.4, §2.4): model and G loss.

The model mirrors the official `OSAvatarSECC_Img2plane_Torso` prefixes: the stage-2 head (`cano_img2plane_backbone`,
`secc_img2plane_backbone`, `decoder`) and `superresolution`. Only the SR trains: the head's weights are `Frozen`
variables (not `nnx.Param`), so they get no gradients and no optimiser state, and its BatchNorm runs on running
statistics; the rendered feature image and opacity are detached before the SR (as the official detaches
`weights_img`).

`full`: `superresolution` = `r3p.models.superres.SuperresolutionHybrid8XDC_Warp` (128 → 256 → 512 with the
warp-based torso model). `tiny`: `TinyHTBSR`, a stand-in defined here with the same child names and data flow
(block0, torso warp, torso/bg encoders, head/torso alpha fusion, head_torso_block, person/bg fusion, block1) at
small widths and resolution r → 2r → 4r, because the released SR fixes its resolutions (128/256/512) and its
torso model's widths (≈150 GMAC per frame), far too big for a CPU run. Its torso warp is 2-D (the official warps
a 16-deep 3-D feature volume): keypoint-driven sparse motions, a softmax mask, a dense flow, grid-sampled features.

Loss per branch (src2tgt every step, src2src every `src2src_interval` = 4 steps), TRAINING §2.4:
  mae      masked L1 of the SR image vs the com image (torso mask dilated 41 px at 512, ×1 in / ×0.5 out)   × 1.0
  lip_mae  L1 inside the lip box (lm 48–59, half-size 1.2·max(half-w, half-h), clamped to the image)       × 0.2
  occlusion_2_weights_entropy   binary entropy of the torso model's occlusion_2                            × 0.001
  adv      softplus(−D(SR, raw head render, camera)) from optim.start_adv (src2src on its steps)      × loss.mv_adv
Not computed here (weights in the config, 0 in effect): the perceptual terms (VGG weights are user-supplied, see
TRAINING §2.1.1).

Discriminator (`build_discriminator`, trained by the trainer's D step from start_adv − d_lead, lazy R1 every 16):
real = the mv com image (SR slot, data resolution) ⊕ the mv head image resized to the render resolution (raw
slot); fake = this iteration's mv SR image ⊕ its raw head render (TRAINING §2.4 `D_maximize_th1kh_mv`,
`D_minimize_th1kh_mv_fake`, `D_th1kh_mv_gradient_penalty`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from r3p import losses
from r3p.models.motion_adapter import fuse_planes
from r3p.models.superres import LeakyReLU, alpha_blend, person_alpha
from r3p.nn.grid_sample import grid_sample_2d
from r3p.nn.layers import Conv2d, interpolate_bilinear
from r3p.nn.resize import resize_bilinear
from r3p.nn.stylegan2 import SynthesisBlock, SynthesisBlockNoUp
from r3p.render.renderer import render

Array = jax.Array
HEAD = ("cano_img2plane_backbone", "secc_img2plane_backbone", "decoder")
TORSO_KP_INDEX = (0, 8, 16, 27)   # lm68 jaw ends, chin, nose bridge (`torso_kp_num` = 4)
LIP_INDEX = slice(48, 60)         # outer lip landmarks used for the lip box


class Frozen(nnx.Variable):
  """A weight that is loaded and used but never optimised (the head of this stage)."""


def freeze(module: nnx.Module) -> nnx.Module:
  """Turn every `nnx.Param` of `module` into a `Frozen` variable (same value and metadata, so shardings and the
  torch-name loader still apply) and put BatchNorm layers in eval mode (running statistics)."""
  for _, m in nnx.iter_modules(module):
    for name, v in list(vars(m).items()):
      if isinstance(v, nnx.Param):
        setattr(m, name, Frozen(v.get_value(), **v.get_metadata()))
    if hasattr(m, "use_running_average"):
      m.use_running_average = True
  return module


def _seq(layers, x):
  for m in layers:
    x = m(x)
  return x


def _grad_scale(v: Array, scale: float = 0.1) -> Array:
  """Value unchanged, gradient × `scale` (the official `v*0.1 + v.detach()*0.9` on deformation / occlusion)."""
  return v * scale + jax.lax.stop_gradient(v) * (1.0 - scale)


def _kp_gaussians(kp: Array, h: int, w: int, var: float = 0.01) -> Array:
  """kp [B,K,2] (x, y in [-1,1]) -> [B,h,w,K] Gaussian heatmaps (align-corners grid)."""
  ys, xs = jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w)
  gy, gx = jnp.meshgrid(ys, xs, indexing="ij")
  d = (gx[None, :, :, None] - kp[:, None, None, :, 0]) ** 2 + (gy[None, :, :, None] - kp[:, None, None, :, 1]) ** 2
  return jnp.exp(-0.5 * d / var)


class TinyTorsoWarp(nnx.Module):
  """2-D stand-in for `WarpBasedTorsoModelMediaPipe` (same roles: appearance_extractor, motion_field_estimator,
  deform_based_generator, occlusion_2_predictor). Source at mid resolution m, features at m/2."""

  def __init__(self, feat: int = 16, hid: int = 16, *, rngs: nnx.Rngs):
    k = len(TORSO_KP_INDEX) + 1
    self.feat, self.hid = feat, hid
    self.appearance_extractor = nnx.List([Conv2d(5, feat, 3, stride=2, padding=1, rngs=rngs), LeakyReLU(0.2),
                                          Conv2d(feat, feat, 3, padding=1, rngs=rngs)])
    # input: heatmap diffs (k) + k deformed compressed sources (k·4) + head rgb/opacity (4)
    self.compress = Conv2d(feat + 2, 4, 1, rngs=rngs)
    self.motion_field_estimator = nnx.List([Conv2d(k + 4 * k + 4, 32, 3, padding=1, rngs=rngs), LeakyReLU(0.2),
                                            Conv2d(32, 32, 3, padding=1, rngs=rngs), LeakyReLU(0.2)])
    self.mask_conv = Conv2d(32, k, 3, padding=1, rngs=rngs)
    self.occlusion_conv2 = Conv2d(32, 1, 3, padding=1, rngs=rngs)
    self.deform_based_generator = nnx.List([Conv2d(feat, hid, 3, padding=1, rngs=rngs), LeakyReLU(0.2),
                                            Conv2d(hid, hid, 3, padding=1, rngs=rngs), LeakyReLU(0.2)])
    self.out_conv = Conv2d(hid, 3, 3, padding=1, rngs=rngs)
    self.occlusion_2_predictor = nnx.List([Conv2d(hid + 1, 16, 3, padding=1, rngs=rngs), LeakyReLU(0.0),
                                           Conv2d(16, 1, 3, padding=1, rngs=rngs)])

  def precompute(self, ref_torso_rgb: Array, segmap: Array) -> dict[str, Array]:
    seg = interpolate_bilinear(segmap[..., jnp.array([2, 4])].astype(jnp.float32), ref_torso_rgb.shape[1:3])
    feats = _seq(self.appearance_extractor, jnp.concatenate([ref_torso_rgb, seg], -1))
    h, w = feats.shape[1:3]
    seg_lo = interpolate_bilinear(seg, (h, w))
    torso = losses.basic.dilate(jnp.clip(seg_lo[..., :1] + seg_lo[..., 1:], 0, 1), 3)
    feats = feats * torso
    return dict(feats=feats, fs_compressed=self.compress(jnp.concatenate([feats, seg_lo], -1)))

  def __call__(self, cache: dict, kp_s: Array, kp_d: Array, rgb_mid: Array, weights_mid: Array):
    idx = jnp.array(TORSO_KP_INDEX)
    ks, kd = kp_s[:, idx, :2].astype(jnp.float32), kp_d[:, idx, :2].astype(jnp.float32)
    fs = cache["fs_compressed"]
    b, h, w, _ = fs.shape
    ys, xs = jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w)
    gy, gx = jnp.meshgrid(ys, xs, indexing="ij")
    grid = jnp.stack([gx, gy], -1)                                                   # [h,w,2] (x, y)
    # sparse motions: identity + per keypoint "move the source keypoint to the driving one" (rotations = I)
    moved = grid[None, None] - kd[:, :, None, None, :] + ks[:, :, None, None, :]     # [B,K,h,w,2]
    motions = jnp.concatenate([jnp.broadcast_to(grid, (b, 1, h, w, 2)), moved], 1)  # [B,K+1,h,w,2]
    k1 = motions.shape[1]
    heat = _kp_gaussians(kd, h, w) - _kp_gaussians(ks, h, w)
    heat = jnp.concatenate([jnp.zeros((b, h, w, 1)), heat], -1)
    warped = jax.vmap(lambda m: grid_sample_2d(fs, m, padding_mode="zeros", align_corners=True), 1, 3)(motions)
    head = interpolate_bilinear(jnp.concatenate([rgb_mid, weights_mid], -1), (h, w))
    y = _seq(self.motion_field_estimator,
             jnp.concatenate([heat, warped.reshape(b, h, w, -1), head], -1))
    mask = jax.nn.softmax(self.mask_conv(y), axis=-1)                                 # [B,h,w,K+1]
    deformation = _grad_scale(jnp.einsum("bkhwc,bhwk->bhwc", motions, mask))
    occlusion_2_low = _grad_scale(jax.nn.sigmoid(self.occlusion_conv2(y)))
    feats = grid_sample_2d(cache["feats"], deformation, padding_mode="border", align_corners=True)
    hid = _seq(self.deform_based_generator, interpolate_bilinear(feats, rgb_mid.shape[1:3]))
    rgb = self.out_conv(hid)
    occ_in = jnp.concatenate([hid, interpolate_bilinear(occlusion_2_low, hid.shape[1:3])], -1)
    occlusion_2 = jax.nn.sigmoid(_seq(self.occlusion_2_predictor, occ_in))
    return rgb, dict(occlusion=occlusion_2_low, occlusion_2=occlusion_2, deformed_torso_hid=hid, kp_src=ks,
                     kp_drv=kd)


class TinyHTBSR(nnx.Module):
  """Stand-in for `SuperresolutionHybrid8XDC_Warp` (same children, same fusion v2), r → 2r → 4r, see the module
  docstring. Interface: `precompute(ref_torso_img, bg_img, segmap)`, `__call__(rgb, x, weights, cache, kp_s, kp_d)`."""

  def __init__(self, in_channels: int = 32, channels: int = 32, w_dim: int = 16, render_resolution: int = 16,
               torso_feat: int = 16, torso_hid: int = 16, *, rngs: nnx.Rngs):
    c, mid, out = channels, 2 * render_resolution, 4 * render_resolution
    self.w_dim, self.mid = w_dim, mid
    self.block0 = SynthesisBlock(in_channels, c, w_dim=w_dim, resolution=mid, rngs=rngs)
    self.torso_model = TinyTorsoWarp(torso_feat, torso_hid, rngs=rngs)
    self.torso_encoder = nnx.List([Conv2d(torso_hid, c, 1, rngs=rngs)])
    self.bg_encoder = nnx.List([Conv2d(3, 16, 3, padding=1, rngs=rngs), LeakyReLU(),
                                Conv2d(16, c, 3, padding=1, rngs=rngs)])
    self.fuse_head_torso_convs = nnx.List([Conv2d(2 * c, c, 3, padding=1, rngs=rngs), LeakyReLU(),
                                           Conv2d(c, c, 3, padding=1, rngs=rngs)])
    self.head_torso_block = SynthesisBlockNoUp(c, c, w_dim=w_dim, resolution=mid, rngs=rngs)
    self.fuse_fg_bg_convs = nnx.List([Conv2d(2 * c, 16, 1, rngs=rngs), LeakyReLU(),
                                      Conv2d(16, c, 3, padding=1, rngs=rngs)])
    self.block1 = SynthesisBlock(c, c // 2, w_dim=w_dim, resolution=out, rngs=rngs)

  def _resize(self, x, size):
    return resize_bilinear(x, (size, size), antialias=True)

  def precompute(self, ref_torso_img: Array, bg_img: Array, segmap: Array) -> dict[str, Any]:
    torso = self._resize(ref_torso_img, self.mid)
    bg = self._resize(bg_img, self.mid)
    return dict(ref_torso_rgb_256=torso, ref_bg_rgb_256=bg, x_bg=_seq(self.bg_encoder, bg),
                torso=self.torso_model.precompute(torso, segmap))

  def __call__(self, rgb, x, weights, cache, kp_s, kp_d, *, head_threshold: float = 0.9, ws=None):
    ws = jnp.ones((1, 3, self.w_dim), jnp.float32) if ws is None else ws   # the official all-ones SR ws
    rgb_mid, w_mid = self._resize(rgb, self.mid), self._resize(weights, self.mid)
    x_head, rgb_head = self.block0(x, rgb, ws)
    rgb_torso, aux = self.torso_model(cache["torso"], kp_s, kp_d, rgb_mid, w_mid)
    x_torso = _seq(self.torso_encoder, aux["deformed_torso_hid"])
    rgb_ht, xx = alpha_blend(rgb_head, x_head, rgb_torso, x_torso, w_mid)
    xx = _seq(self.fuse_head_torso_convs, xx)
    xx, rgb_ht = self.head_torso_block(xx, rgb_ht, ws)
    person = person_alpha(w_mid, aux["occlusion_2"], head_threshold)
    rgb_p, xx = alpha_blend(rgb_ht, xx, cache["ref_bg_rgb_256"], cache["x_bg"], person)
    xx = _seq(self.fuse_fg_bg_convs, xx)
    _, img = self.block1(xx, rgb_p, ws)
    return jnp.clip(img, -1.0, 1.0), aux


def head_config(cfg):
  """The stage-2 config of the same variant with this config's `model` (the head's sizes): the head is built by
  the motion-adapter stage's own model class, whatever loss fields that stage reads. Its loss-only networks
  (perceptual VGGs) are switched off: they are not part of the head."""
  from configs import motion_adapter
  hc = motion_adapter.get_config(cfg.variant)
  hc.model = ml_collections.ConfigDict(cfg.model.to_dict())
  for k in ("lpips_raw", "lip_lpips"):
    if k in hc.loss:
      hc.loss[k] = 0.0
  return hc


class HTBSRModel(nnx.Module):
  """Frozen stage-2 head + trainable HTB-SR (`superresolution`)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    from train.stages.motion_adapter import MotionAdapterModel
    head = MotionAdapterModel(head_config(cfg), rngs=rngs)
    for name in HEAD:
      setattr(self, name, freeze(getattr(head, name)))
    m = cfg.model
    if m.tiny:
      self.superresolution = TinyHTBSR(32, m.sr_channels, m.sr_w_dim, m.render_resolution, m.torso_feat,
                                       m.torso_hid, rngs=rngs)
    else:
      from r3p.models.superres import SuperresolutionHybrid8XDC_Warp
      self.superresolution = SuperresolutionHybrid8XDC_Warp(32, rngs=rngs)


def build_model(cfg, rngs: nnx.Rngs) -> HTBSRModel:
  m = cfg.model
  if cfg.data.size != 4 * m.render_resolution:
    raise ValueError(f"HTB-SR upsamples ×4: data.size ({cfg.data.size}) must be 4 × model.render_resolution "
                     f"({m.render_resolution})")
  return HTBSRModel(cfg, rngs=rngs)


def param_group(path: tuple) -> str:
  """Only the SR is optimised (official G optimiser of this stage)."""
  if str(path[0]) != "superresolution":
    raise ValueError(f"HTB-SR: unexpected trainable parameter {'.'.join(map(str, path))} (the head is frozen)")
  return "sr"


def init_lambdas(cfg) -> dict[str, Any]:
  del cfg
  return {}


SR_BLOCKS = ("block0", "block1")   # the head SR blocks the official stage 3 takes from the stage-2 SR


def _latest_state(workdir: str) -> tuple[int, dict]:
  import os

  import orbax.checkpoint as ocp
  from r3p.checkpoint import Checkpointer
  step = Checkpointer(os.path.join(workdir, "ckpt")).latest_step()
  if step is None:
    raise FileNotFoundError(f"init_from: no checkpoint under {os.path.join(workdir, 'ckpt')}")
  return step, ocp.StandardCheckpointer().restore(os.path.join(workdir, "ckpt", str(step), "state"))


def _norm(path) -> tuple:  # list indices may come back from Orbax as '0' where the live tree has 0
  return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _fill(live, src, label: str):
  """`live` (a pytree of arrays) with every leaf replaced by the leaf of `src` at the same path, cast to the live
  dtype and placed with the live sharding. A missing path raises KeyError, a shape mismatch ValueError, both
  naming the key (`label` prefixes it)."""
  want = jax.tree_util.tree_leaves_with_path(live)
  got = {_norm(p): v for p, v in jax.tree_util.tree_leaves_with_path(src)}
  missing = [".".join(_norm(p)) for p, _ in want if _norm(p) not in got]
  if missing:
    raise KeyError(f"{label} lacks {missing[:3]}")

  def put(path, leaf):
    v = got[_norm(path)]
    if tuple(v.shape) != tuple(leaf.shape):
      raise ValueError(f"{label}.{'.'.join(_norm(path))} has shape {tuple(v.shape)}, "
                       f"expected {tuple(leaf.shape)}")
    return jax.device_put(jnp.asarray(v, leaf.dtype), leaf.sharding)

  return jax.tree_util.tree_map_with_path(put, live)


def load_head(rest: dict, workdir: str, saved: tuple[int, dict] | None = None) -> dict:
  """The frozen head from a motion-adapter run: its latest checkpoint's params and BatchNorm statistics of
  `cano_img2plane_backbone`, `secc_img2plane_backbone`, `decoder` replace those in `rest` (this stage's
  non-trainable state), each leaf placed with the sharding of the leaf it replaces. Shapes must match (same
  variant); a missing or extra key raises naming it. `saved`: an already restored (step, state)."""
  step, saved = saved or _latest_state(workdir)

  def merge(a, b):
    out = dict(a)
    for k, v in b.items():
      out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out

  new = dict(rest)
  for name in HEAD:
    src = merge(saved["params"].get(name, {}), saved.get("rest", {}).get(name, {}))
    new[name] = _fill(rest[name], src, f"init_from {workdir} (step {step}): {name}")
  return new


def load_sr_blocks(params: dict, saved_params: dict, label: str = "init_from") -> tuple[dict, list[str]]:
  """The head SR blocks (`superresolution.block0`, `.block1`) from a stage-2 run that has an SR branch
  (`model.use_sr`), as the official stage 3 loads the stage-2 SR non-strictly: the torso/background/fusion parts
  stay at their init. Returns (params, names of the blocks copied); a stage-2 run without SR copies none. A block
  present in both with another shape raises (as torch's non-strict load does)."""
  src_sr, live_sr = saved_params.get("superresolution", {}), params.get("superresolution", {})
  names = [b for b in SR_BLOCKS if b in src_sr and b in live_sr]
  if not names:
    return params, []
  sr = dict(live_sr)
  for b in names:
    sr[b] = _fill(live_sr[b], src_sr[b], f"{label}: superresolution.{b}")
  return dict(params, superresolution=sr), names


def load_pretrained(cfg, state: dict, trainer=None) -> dict:
  """After a from-scratch init (not on resume), when `cfg.init_from` names a motion-adapter workdir: the frozen
  head (`load_head`) and, if that run trained an SR, the head SR blocks (`load_sr_blocks`)."""
  del trainer
  if cfg.get("init_from"):
    step, saved = _latest_state(cfg.init_from)
    state = dict(state, rest=load_head(state["rest"], cfg.init_from, (step, saved)))
    params, copied = load_sr_blocks(state["params"], saved["params"], f"init_from {cfg.init_from} (step {step})")
    state = dict(state, params=params)
    print(f"init_from {cfg.init_from} (step {step}): head loaded; head SR blocks "
          + (f"{', '.join(copied)} loaded" if copied else "not in that run (no SR branch): they start at init"),
          flush=True)
  return state


def _dilate_size(size: int) -> int:
  k = max(1, round(41 * size / 512))  # the official 41×41 dilation at 512, scaled to this image size
  return k if k % 2 else k + 1


def lip_box_mask(kp: Array, size: int) -> Array:
  """[B,S,S,1] mask of the official lip box: centre of lm 48–59, half-size 1.2·max(half-width, half-height)."""
  lips = (kp[:, LIP_INDEX, :2] + 1.0) * 0.5 * size                       # pixels
  lo, hi = lips.min(1), lips.max(1)
  c, half = (lo + hi) / 2, 1.2 * jnp.max((hi - lo) / 2, axis=-1, keepdims=True)
  p = jnp.arange(size, dtype=jnp.float32) + 0.5
  inx = jnp.abs(p[None, :] - c[:, 0:1]) <= half
  iny = jnp.abs(p[None, :] - c[:, 1:2]) <= half
  return (iny[:, :, None] & inx[:, None, :])[..., None].astype(jnp.float32)


def _branch_losses(cfg, img, target, torso_mask, kp, aux, prefix):
  lw = cfg.loss
  mask = losses.basic.dilate(torso_mask, _dilate_size(img.shape[1]))
  lip = lip_box_mask(kp, img.shape[1])
  lip_err = jnp.sum(lip * jnp.abs(img - target), axis=(1, 2, 3)) / jnp.maximum(3 * jnp.sum(lip, axis=(1, 2, 3)), 1)
  out = {f"{prefix}_img_mae": losses.masked_l1(img, target, mask, unmasked_weight=lw.unmasked_weight),
         f"{prefix}_img_lip_mae": jnp.mean(lip_err),
         f"{prefix}_occlusion_2_weights_entropy": losses.opacity_entropy(aux["occlusion_2"])}
  total = (lw.mse * out[f"{prefix}_img_mae"] + lw.lip_mae * out[f"{prefix}_img_lip_mae"]
           + lw.occlusion_2_entropy * out[f"{prefix}_occlusion_2_weights_entropy"])
  return total, out


def d_resolution(cfg) -> int:
  """The D sees the SR output: `model.d_resolution`, 0 = the data (SR output) resolution."""
  return int(cfg.model.d_resolution) or int(cfg.data.size)


def build_discriminator(cfg, rngs: nnx.Rngs):
  """The stage's DualDiscriminator (`disc`): size preset `model.d_size` at the SR resolution."""
  from r3p.models.discriminator import DualDiscriminator
  m = cfg.model
  return DualDiscriminator.of_size(m.d_size, d_resolution(cfg), mbstd_group_size=m.d_mbstd_group, rngs=rngs)


def g_loss(model: HTBSRModel, cfg, batch: dict[str, Array], key: Array, step: Array,
           lambdas: dict[str, Array], disc=None):
  """Total G loss of the SR (scalar), per-term metrics, λs unchanged (this stage has none):
  `(loss, (metrics, lambdas))`, with a discriminator `(loss, (metrics, lambdas, d_inputs))` (see the module
  docstring; the adversarial terms are skipped by a `lax.cond` before optim.start_adv).

  The src2src branch runs every step in the same SR call as src2tgt and is weighted by its schedule flag (one
  static program, the official gradients on the official steps)."""
  m, lw = cfg.model, cfg.loss
  b = batch["cond_tgt"].shape[0]
  cano, src = batch["cond_cano"], batch["cond_src"]
  # Frozen head: src2tgt and src2src planes, one render call; everything detached before the SR.
  cano_planes = model.cano_img2plane_backbone(batch["ref_img"])
  diffs = model.secc_img2plane_backbone(jnp.concatenate(
      [jnp.concatenate([cano, src, batch["cond_tgt"]], -1), jnp.concatenate([cano, src, src], -1)], 0))
  planes = fuse_planes(jnp.concatenate([cano_planes, cano_planes]), diffs, mode="add")
  r = render(planes, model.decoder, jnp.concatenate([batch["tgt_camera"], batch["ref_camera"]]), key=key,
             resolution=m.render_resolution, n_coarse=m.n_coarse, n_fine=m.n_fine, chunk_rays=None)
  feat = jax.lax.stop_gradient(r["feature_image"])
  weights = jax.lax.stop_gradient(r["weights_image"])

  sr = model.superresolution
  cache = sr.precompute(batch["ref_torso_img"], batch["bg_img"], batch["ref_segmap"])
  cache = jax.tree.map(lambda a: jnp.concatenate([a, a]), cache)
  kp_s = jnp.concatenate([batch["ref_kp"], batch["ref_kp"]])
  kp_d = jnp.concatenate([batch["tgt_kp"], batch["ref_kp"]])
  img, aux = sr(feat[..., :3], feat, weights, cache, kp_s, kp_d, head_threshold=m.head_threshold)
  aux_mv = jax.tree.map(lambda a: a[:b], aux)
  aux_ref = jax.tree.map(lambda a: a[b:], aux)
  ref_torso = jnp.clip(batch["ref_segmap"][..., 2:3] + batch["ref_segmap"][..., 4:5], 0, 1)
  total, metrics = _branch_losses(cfg, img[:b], batch["tgt_com_img"], batch["tgt_torso_mask"], batch["tgt_kp"],
                                  aux_mv, "mv")
  ref_total, ref_metrics = _branch_losses(cfg, img[b:], batch["ref_com_img"], ref_torso, batch["ref_kp"],
                                          aux_ref, "ref")
  ref_on = (step % lw.src2src_interval == 0).astype(jnp.float32)
  total = total + ref_on * ref_total
  metrics.update({k: ref_on * v for k, v in ref_metrics.items()})
  if disc is None:
    return total, (metrics, lambdas)

  raw = feat[..., :3]
  fake_mv = (img[:b], raw[:b], batch["tgt_camera"])
  fake_ref = (img[b:], raw[b:], batch["ref_camera"])
  k_mv, k_ref = jax.random.split(jax.random.fold_in(key, losses.adversarial.G_ADV_SALT))
  d_graph, d_state = nnx.split(disc)

  def adv(ops):
    fm, fr, st = ops
    d = nnx.merge(d_graph, st)
    fn = lambda i, r, c: d(i, r, c)  # noqa: E731
    return (losses.adversarial.g_adv_loss(fn, fm, k_mv, m.disc_c_noise),
            losses.adversarial.g_adv_loss(fn, fr, k_ref, m.disc_c_noise))

  def no_adv(ops):
    return jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)

  on = step >= cfg.optim.start_adv
  adv_mv, adv_ref = jax.lax.cond(on, adv, no_adv, (fake_mv, fake_ref, d_state))
  total = total + on.astype(jnp.float32) * (lw.mv_adv * adv_mv + ref_on * lw.ref_adv * adv_ref)
  metrics.update({"mv_adv": adv_mv, "ref_adv": ref_on * adv_ref})
  res = m.render_resolution
  head_raw = jax.image.resize(batch["tgt_img"], (b, res, res, 3), "linear", antialias=True)
  d_inputs = {"real": {"mv": (batch["tgt_com_img"], head_raw, batch["tgt_camera"])}, "fake": {"mv": fake_mv}}
  return total, (metrics, lambdas, jax.lax.stop_gradient(d_inputs))
