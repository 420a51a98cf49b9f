"""Stage 2, the motion adapter (TRAINING §1.3, §2.3): model assembly and the G loss as a pure function.

Children mirror the official prefixes: `cano_img2plane_backbone`, `secc_img2plane_backbone`, `decoder` and,
with `model.use_sr` (`full`, `tiny_sr`), `superresolution`: the head-only EG3D SR
(`r3p.models.superres.SuperresolutionHybrid8XDC`, block0 r → 2r, block1 2r → 4r, all-ones ws; released 128 → 256
→ 512 with the released `superresolution.block{0,1}.*` keys; `tiny_sr` 16 → 32 → 64 at small widths), optimiser
group 'sr' (lr gated from `optim.sr_start`; with `two_stage_training` the only group that trains from
`optim.start_adv`). In `tiny`/`tiny_sr` the canonical branch is `TinyImg2Plane` (defined here: the core
Img2PlaneModel has no size option); `tiny` has no SR: the raw-image (render-resolution) losses only, lip crops
from the raw image.

Losses with SR (TRAINING §2.3): per branch, SR masked L1 + perceptual vs the data frame, raw masked L1 +
perceptual vs its antialiased downsample, lip L1 + perceptual on crops of the SR image, opacity terms; the mv
SR L1/perceptual terms are 0 from start_adv on (the released `disable_highreso_at_stage1` with two-stage
training, [as released]); the ref (src2src) SR terms and the lip terms stay.

The dual discriminator (`build_discriminator`, official top-level key `disc`) is a separate module trained by the
trainer's D step; `g_loss(..., disc=D)` adds the non-saturating G terms and hands back this iteration's detached
fakes and the reals for that D step (TRAINING §2.1.4, §2.3). It judges SR ⊕ raw at the SR resolution (`tiny`,
no SR: the raw render in both slots, at the render resolution).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from r3p import losses
from r3p.data import synthetic
from r3p.losses import adversarial
from r3p.losses import lip as lip_lib
from r3p.losses import perceptual as perceptual_lib
from r3p.models.decoder import OSGDecoder
from r3p.models.discriminator import DualDiscriminator
from r3p.models.motion_adapter import SegFormerSECC2PlaneBackbone, fuse_planes
from r3p.models.planes import to_planes
from r3p.models.superres import SuperresolutionHybrid8XDC
from r3p.nn.layers import Conv2d
from r3p.nn.segformer import MiTConfig
from r3p.render import triplane
from r3p.render.renderer import render

Array = jax.Array
GROUPS = ("cano", "ma", "decoder", "sr")
_PREFIX_GROUP = {"cano_img2plane_backbone": "cano", "secc_img2plane_backbone": "ma", "decoder": "decoder",
                 "superresolution": "sr"}


class TinyImg2Plane(nnx.Module):
  """Stand-in canonical encoder for CPU runs: img [B,S,S,3] -> planes [B,3,S/2,S/2,32] (2 convs + to_planes)."""

  def __init__(self, channels: int = 16, *, rngs: nnx.Rngs):
    self.conv0 = Conv2d(3, channels, 3, stride=2, padding=1, rngs=rngs)
    self.conv1 = Conv2d(channels, 96, 3, padding=1, rngs=rngs)

  def __call__(self, img: Array) -> Array:
    return to_planes(self.conv1(jax.nn.leaky_relu(self.conv0(img), 0.2)))


class MotionAdapterModel(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    m = cfg.model
    if m.tiny:
      self.cano_img2plane_backbone = TinyImg2Plane(m.cano_channels, rngs=rngs)
    else:
      from r3p.models.img2plane import Img2PlaneModel
      self.cano_img2plane_backbone = Img2PlaneModel(rngs=rngs)
    mit = MiTConfig(embed_dims=tuple(m.mit_dims), num_heads=tuple(m.mit_heads), mlp_ratios=tuple(m.mit_mlp_ratios),
                    depths=tuple(m.mit_depths), sr_ratios=tuple(m.mit_sr_ratios))
    self.secc_img2plane_backbone = SegFormerSECC2PlaneBackbone(mit=mit, embedding_dim=m.head_dim, rngs=rngs)
    self.decoder = OSGDecoder(rngs=rngs)
    if m.use_sr:
      # The head-only EG3D SR (stage-2 `superresolution`, optimiser group 'sr'): render r -> 4r, ones ws.
      self.superresolution = SuperresolutionHybrid8XDC(32, tuple(m.sr_block_channels),
                                                       input_resolution=m.render_resolution,
                                                       w_dim=m.sr_block_w_dim, rngs=rngs)
    lw = cfg.loss
    if lw.lpips_raw > 0 or lw.lip_lpips > 0 or (m.use_sr and lw.get("lpips", 0.0) > 0):
      # Frozen VGG19 + VGGFace (FrozenWeight, not nnx.Param: never optimised). Random init here; the released
      # weights are loaded by `load_pretrained` from `loss.vgg19_weights` / `loss.vggface_weights`.
      self.perceptual = perceptual_lib.PerceptualNets(width_div=lw.vgg_width_div, rngs=rngs)
    # BatchNorm (SegFormerHead) in training mode: batch statistics over the *global* batch (GSPMD computes the
    # mean over the sharded batch axis), i.e. cross-replica BN like the official SyncBN.
    for _, mod in nnx.iter_modules(self):
      if hasattr(mod, "use_running_average"):
        mod.use_running_average = False

  def secc_planes(self, cano_secc: Array, src_secc: Array, tgt_secc: Array) -> Array:
    return self.secc_img2plane_backbone(jnp.concatenate([cano_secc, src_secc, tgt_secc], axis=-1))


def build_model(cfg, rngs: nnx.Rngs) -> MotionAdapterModel:
  m = cfg.model
  if m.use_sr and cfg.data.size != sr_resolution(cfg):
    raise ValueError(f"the SR upsamples ×4: data.size ({cfg.data.size}) must be 4 × model.render_resolution "
                     f"({m.render_resolution}) with model.use_sr")
  return MotionAdapterModel(cfg, rngs=rngs)


def sr_resolution(cfg) -> int:
  """The SR output resolution (4 × the render resolution; the released 128 -> 512)."""
  return 4 * int(cfg.model.render_resolution)


def d_resolution(cfg) -> int:
  """The D's input resolution: `model.d_resolution`, 0 = the G's output resolution (the SR's with
  `model.use_sr`, else the render resolution: `tiny`)."""
  m = cfg.model
  return int(m.d_resolution) or (sr_resolution(cfg) if m.use_sr else int(m.render_resolution))


def build_discriminator(cfg, rngs: nnx.Rngs) -> DualDiscriminator:
  """The stage's DualDiscriminator (`disc`): size preset `model.d_size` at `d_resolution(cfg)`."""
  m = cfg.model
  return DualDiscriminator.of_size(m.d_size, d_resolution(cfg), mbstd_group_size=m.d_mbstd_group, rngs=rngs)


def param_group(path: tuple) -> str:
  """Optimiser group of a param path (official G groups 0..3 = cano I2P, MA, decoder, SR)."""
  return _PREFIX_GROUP[str(path[0])]


def _resize(x: Array, size: int, method: str = "linear") -> Array:
  if x.shape[1] == size:
    return x
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), method, antialias=(method != "nearest"))


def _dilate_size(size: int) -> int:
  k = max(1, round(41 * size / 512))  # the official 41×41 dilation at 512, scaled to this image size
  return k if k % 2 else k + 1


def _raw_losses(model, cfg, raw, weights, img, head_mask, lm, prefix, lip=True):
  """Raw-image (render resolution) losses of one branch: masked L1, perceptual, lip crops, opacity terms.

  lm: [B,68,2] landmarks in [-1,1] image coordinates of the supervised frame (for the lip box). Without SR
  (`tiny`) the lip crops come from the raw image (officially they come from the SR image: `lip=False` here
  and `_sr_losses` takes them)."""
  m, lw = cfg.model, cfg.loss
  res = m.render_resolution
  mask = _resize(losses.basic.dilate(head_mask, _dilate_size(img.shape[1])), res, "nearest")
  head_res = _resize(head_mask, res, "nearest")
  gt = _resize(img, res)
  out = {
      f"{prefix}_img_mae_raw": losses.masked_l1(raw, gt, mask, unmasked_weight=lw.unmasked_weight),
      f"{prefix}_weights_l1_loss": losses.opacity_l1(weights, head_res),
      f"{prefix}_weights_entropy_loss": losses.opacity_entropy(weights),
  }
  total = (lw.mse_raw * out[f"{prefix}_img_mae_raw"] + lw.weights_l1 * out[f"{prefix}_weights_l1_loss"]
           + lw.weights_entropy * out[f"{prefix}_weights_entropy_loss"])
  if lw.lpips_raw > 0:
    out[f"{prefix}_img_lpips_raw"] = perceptual_lib.perceptual_loss(model.perceptual, raw, gt, size=lw.lpips_size)
    total = total + lw.lpips_raw * out[f"{prefix}_img_lpips_raw"]
  if lip and (lw.lip_mae > 0 or lw.lip_lpips > 0):
    total = _lip_losses(model, cfg, raw, gt, lm, prefix, total, out)
  return total, out


def _lip_losses(model, cfg, pred, gt, lm, prefix, total, out):
  """Adds the lip-crop L1 and perceptual terms (TRAINING §2.1.3) of `pred` vs `gt` (same resolution) to
  `total` (returned; the terms are added one by one, in the order the raw path always used) and `out`."""
  lw = cfg.loss
  res = pred.shape[1]
  boxes = lip_lib.lip_boxes(lip_lib.landmarks_to_pixels(lm, res, res), res, res)
  out[f"{prefix}_img_lip_mae"], pc, tc = lip_lib.lip_mae(pred, gt, boxes, lw.lip_crop_size)
  total = total + lw.lip_mae * out[f"{prefix}_img_lip_mae"]
  if lw.lip_lpips > 0:
    out[f"{prefix}_img_lip_lpips"] = perceptual_lib.perceptual_loss(model.perceptual, pc, tc, size=lw.lpips_size)
    total = total + lw.lip_lpips * out[f"{prefix}_img_lip_lpips"]
  return total


def _sr_losses(model, cfg, sr, img, head_mask, lm, prefix, sr_on):
  """SR-image losses of one branch (TRAINING §2.3): masked L1 (head mask dilated 41 px at 512, ×`mse`) and
  perceptual (×`lpips`) vs the data frame at the SR resolution, both weighted (terms and metrics) by `sr_on`
  (the mv branch's `disable_highreso_at_stage1` gate), and the lip crops from the SR image (not gated)."""
  lw = cfg.loss
  res = sr.shape[1]
  gt = _resize(img, res)
  mask = _resize(losses.basic.dilate(head_mask, _dilate_size(img.shape[1])), res, "nearest")
  out = {f"{prefix}_img_mae": losses.masked_l1(sr, gt, mask, unmasked_weight=lw.unmasked_weight)}
  gated = lw.mse * out[f"{prefix}_img_mae"]
  if lw.lpips > 0:
    out[f"{prefix}_img_lpips"] = perceptual_lib.perceptual_loss(model.perceptual, sr, gt, size=lw.lpips_size)
    gated = gated + lw.lpips * out[f"{prefix}_img_lpips"]
  out = {k: sr_on * v for k, v in out.items()}
  total = sr_on * gated
  if lw.lip_mae > 0 or lw.lip_lpips > 0:
    total = _lip_losses(model, cfg, sr, gt, lm, prefix, total, out)
  return total, out


def g_loss(model: MotionAdapterModel, cfg, batch: dict[str, Array], key: Array, step: Array,
           lambdas: dict[str, Array], disc: DualDiscriminator | None = None):
  """Total G loss (scalar), per-term metrics and the updated auto-tuned λs (TRAINING §2.3):
  `(loss, (metrics, lambdas))`, or with a discriminator `(loss, (metrics, lambdas, d_inputs))`.

  With `disc`, the G adversarial terms softplus(−D(fake)) of the mv render (every step, `loss.mv_adv`) and of the
  src2src render (on src2src steps, `loss.ref_adv`) are added from step `optim.start_adv` on (weight 0 before:
  a `lax.cond` skips the D passes, so the loss is exactly the D-less one). `d_inputs` (r3p.losses.adversarial
  triples, detached) = reals {ref, mv}: the GT frames at the D resolution + their antialiased resize to the
  render resolution; fakes {mv}: this iteration's mv SR image ⊕ raw render with `model.use_sr` (without SR,
  `tiny`: the raw render resized to the D resolution fills the SR slot).

  With `model.use_sr` (TRAINING §2.3): the SR image (both branches, one call) gets the masked L1 (`loss.mse`) and
  perceptual (`loss.lpips`) terms vs the data frame, `{mv,ref}_img_mae` / `_img_lpips`, and the lip crops come
  from it; the mv SR L1/perceptual terms (and their metrics) are 0 from `optim.start_adv` on
  (`disable_highreso_at_stage1`). The raw terms stay as without SR.

  Compile-time economy (one static program, no lax.cond): the src2src branch and the lazy regularisers are
  computed every step and weighted by their schedule flag (0/1), which gives the official gradients on the
  official steps. The six extra SECC-branch passes (src2src, perturbation base/perturbed, blink p1/p2/p3) run as
  one `vmap` over passes, so each pass keeps its own BatchNorm batch statistics, as separate torch forwards do;
  only the main src2tgt pass updates the running statistics.
  """
  lw, m = cfg.loss, cfg.model
  k_render, k_dens, k_reg = jax.random.split(key, 3)
  b, size = batch["cond_tgt"].shape[0], batch["cond_tgt"].shape[1]
  cano, src = batch["cond_cano"], batch["cond_src"]
  cano_planes = model.cano_img2plane_backbone(batch["ref_img"])
  diff_mv = model.secc_planes(cano, src, batch["cond_tgt"])

  # Regulariser SECCs (§2.3): perturbation (ref with prob 0.25, one draw per batch; id/exp + N(0, 0.01²)) and
  # blink linearity (per sample: base ref with prob 0.25; eyes closed by p1 ~ U(0,.5), p3 ~ U(.5,1), p2 = mean).
  kp, kn1, kn2, k1, k3, kr = jax.random.split(k_reg, 6)
  use_ref = jax.random.uniform(kp) < 0.25
  expr = jnp.where(use_ref, batch["ref_expr"], batch["tgt_expr"])
  yaw = jnp.where(use_ref, batch["ref_yaw"], batch["tgt_yaw"])
  base_secc = synthetic.secc_batch(batch["ident"], expr, yaw, size)
  pert_secc = synthetic.secc_batch(batch["ident"] + 0.01 * jax.random.normal(kn1, batch["ident"].shape),
                                   expr + 0.01 * jax.random.normal(kn2, expr.shape), yaw, size)
  p1 = jax.random.uniform(k1, (b,), minval=0.0, maxval=0.5)
  p3 = jax.random.uniform(k3, (b,), minval=0.5, maxval=1.0)
  ref_pick = jax.random.uniform(kr, (b,)) < 0.25
  bexpr = jnp.where(ref_pick[:, None], batch["ref_expr"], batch["tgt_expr"])
  byaw = jnp.where(ref_pick, batch["ref_yaw"], batch["tgt_yaw"])
  def closed(p):
    return synthetic.secc_batch(batch["ident"], bexpr.at[:, 1].set(bexpr[:, 1] * (1 - p)), byaw, size)
  tgts = jnp.stack([src, base_secc, pert_secc, closed(p1), closed((p1 + p3) / 2), closed(p3)])
  graphdef, snapshot = nnx.split(model.secc_img2plane_backbone)
  def one_pass(tgt):
    bb = nnx.merge(graphdef, jax.tree.map(lambda x: x, snapshot))  # fresh copy: its BN-stat updates are dropped
    return bb(jnp.concatenate([cano, src, tgt], axis=-1))
  d_ref, d_base, d_pert, d_b1, d_b2, d_b3 = jax.vmap(one_pass)(tgts)

  # One render call for src2tgt (mv) and src2src (ref).
  planes_mv = fuse_planes(cano_planes, diff_mv, mode="add")
  planes_ref = fuse_planes(cano_planes, d_ref, mode="add")
  r = render(jnp.concatenate([planes_mv, planes_ref]), model.decoder,
             jnp.concatenate([batch["tgt_camera"], batch["ref_camera"]]), key=k_render,
             resolution=m.render_resolution, n_coarse=m.n_coarse, n_fine=m.n_fine, chunk_rays=None)
  raw, w = r["feature_image"][..., :3], r["weights_image"]
  lm = jax.vmap(synthetic.landmarks68)
  lm_tgt = lm(batch["ident"], batch["tgt_expr"], batch["tgt_yaw"])[..., :2]
  lm_ref = lm(batch["ident"], batch["ref_expr"], batch["ref_yaw"])[..., :2]
  use_sr = bool(m.use_sr)
  total, metrics = _raw_losses(model, cfg, raw[:b], w[:b], batch["tgt_img"], batch["tgt_head_mask"], lm_tgt, "mv",
                               lip=not use_sr)
  ref_total, ref_metrics = _raw_losses(model, cfg, raw[b:], w[b:], batch["ref_img"], batch["ref_head_mask"],
                                       lm_ref, "ref", lip=not use_sr)
  if use_sr:
    # One SR call for both branches (ones ws, no noise); the output is clamped as the official `image`.
    sr = jnp.clip(model.superresolution(raw, r["feature_image"]), -1.0, 1.0)
    # `disable_highreso_at_stage1` + two-stage: the mv SR L1/perceptual terms are 0 from start_adv on.
    mv_sr_on = (step < cfg.optim.start_adv).astype(jnp.float32)
    sr_total, sr_metrics = _sr_losses(model, cfg, sr[:b], batch["tgt_img"], batch["tgt_head_mask"], lm_tgt, "mv",
                                      mv_sr_on)
    ref_sr_total, ref_sr_metrics = _sr_losses(model, cfg, sr[b:], batch["ref_img"], batch["ref_head_mask"],
                                              lm_ref, "ref", jnp.ones((), jnp.float32))
    total = total + sr_total
    ref_total = ref_total + ref_sr_total
    metrics.update(sr_metrics)
    ref_metrics.update(ref_sr_metrics)
  ref_on = (step % lw.src2src_interval == 0).astype(jnp.float32)
  total = total + ref_on * ref_total
  metrics.update({k: ref_on * v for k, v in ref_metrics.items()})

  def sigma(pts):
    s, _ = model.decoder(triplane.sample_mean(planes_mv, pts))
    return s
  dens = losses.density_reg_l1(sigma, k_dens, b)
  secc_l = jnp.mean(jnp.abs(d_base - d_pert))
  blink_l = jnp.mean(jnp.abs(d_b2 - (d_b1 + d_b3) / 2))
  on = step % lw.reg_interval == 0
  lam_secc = jnp.where(on, losses.update_lambda(lambdas["secc"], secc_l, lw.secc_target, lr=lw.lambda_lr,
                                                max_value=0.2), lambdas["secc"])
  lam_blink = jnp.where(on, losses.update_lambda(lambdas["blink"], blink_l, lw.blink_target, lr=lw.lambda_lr,
                                                 max_value=2.0), lambdas["blink"])
  reg_on = on.astype(jnp.float32)
  total = total + reg_on * (lw.density * dens + 4 * (jax.lax.stop_gradient(lam_secc) * secc_l
                                                      + jax.lax.stop_gradient(lam_blink) * blink_l))
  metrics.update({"regularize_density_l1": dens, "regularize_pertube_secc_mae": secc_l,
                  "regularize_blink_secc_mae": blink_l, "lambda_secc": lam_secc, "lambda_blink": lam_blink})
  new_lambdas = {"secc": lam_secc, "blink": lam_blink}
  if disc is None:
    return total, (metrics, new_lambdas)

  d_res, res = d_resolution(cfg), m.render_resolution
  # The D's SR slot: the SR image with use_sr (the dual D judges SR ⊕ raw), else the raw render resized.
  g_img = sr if use_sr else raw
  fake_mv = (_resize(g_img[:b], d_res), raw[:b], batch["tgt_camera"])
  fake_ref = (_resize(g_img[b:], d_res), raw[b:], batch["ref_camera"])
  k_mv, k_ref = jax.random.split(jax.random.fold_in(key, adversarial.G_ADV_SALT))
  d_graph, d_state = nnx.split(disc)

  def adv(ops):
    fm, fr, st = ops
    d = nnx.merge(d_graph, st)
    fn = lambda i, r, c: d(i, r, c)  # noqa: E731
    return (adversarial.g_adv_loss(fn, fm, k_mv, m.disc_c_noise),
            adversarial.g_adv_loss(fn, fr, k_ref, m.disc_c_noise))

  def no_adv(ops):
    return jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)

  adv_mv, adv_ref = jax.lax.cond(step >= cfg.optim.start_adv, adv, no_adv, (fake_mv, fake_ref, d_state))
  adv_w = (step >= cfg.optim.start_adv).astype(jnp.float32)
  total = total + adv_w * (lw.mv_adv * adv_mv + ref_on * lw.ref_adv * adv_ref)
  metrics.update({"mv_adv": adv_mv, "ref_adv": ref_on * adv_ref})
  d_inputs = {
      "real": {"ref": (_resize(batch["ref_img"], d_res), _resize(batch["ref_img"], res), batch["ref_camera"]),
               "mv": (_resize(batch["tgt_img"], d_res), _resize(batch["tgt_img"], res), batch["tgt_camera"])},
      "fake": {"mv": fake_mv},
  }
  return total, (metrics, new_lambdas, jax.lax.stop_gradient(d_inputs))


def init_lambdas(cfg) -> dict[str, Any]:
  return {"secc": jnp.full((), cfg.loss.lambda_init if cfg.loss.secc_target > 0 else 0.0, jnp.float32),
          "blink": jnp.full((), cfg.loss.lambda_init if cfg.loss.blink_target > 0 else 0.0, jnp.float32)}


def load_pretrained(cfg, state: dict, trainer) -> dict:
  """Put the user-supplied perceptual weights (numpy .npz of the torch state dicts: torchvision `vgg19`,
  Oxford `vgg_face_dag`) into a freshly initialised state (not on resume: checkpoints carry them)."""
  lw = cfg.loss
  if not (lw.vgg19_weights or lw.vggface_weights) or "perceptual" not in state["rest"]:
    return state
  import numpy as np
  if not (lw.vgg19_weights and lw.vggface_weights):
    raise ValueError("loss.vgg19_weights and loss.vggface_weights must be given together")
  from flax import nnx as _nnx
  nets = perceptual_lib.PerceptualNets(
      width_div=lw.vgg_width_div, rngs=_nnx.Rngs(0),
      vgg19_sd=perceptual_lib.vgg19_state_dict(dict(np.load(lw.vgg19_weights))),
      vggface_sd=perceptual_lib.vggface_state_dict(dict(np.load(lw.vggface_weights))))
  new = _nnx.to_pure_dict(_nnx.state(nets))
  sh = trainer.state_shardings["rest"]["perceptual"]
  state["rest"]["perceptual"] = jax.tree.map(lambda x, s: jax.device_put(x, s), new, sh)
  return state
