"""python -m train.main --config configs/htb_sr.py:tiny --workdir /tmp/r3p_htb_tiny

Stage 3 of Real3D-Portrait (TRAINING §1.4, §2.4): HTB-SR, the head–torso–background super-resolution, trained
on full frames (com images) with the stage-2 head frozen. Variants:
  tiny — CPU, minutes: the embedded synthetic dataset with torso/background at 64², the tiny stage-2 head of
         `configs/motion_adapter.py:tiny` rendering at 16² (12+12 samples), `TinyHTBSR` (a small stand-in with
         the released SR's structure, 16 → 32 → 64, 2-D torso warp), global batch 2, schedule ÷1000.
  full — the released sizes: stage-2 head (I2P, MiT-b0, OSGDecoder, 128² × 48+48), the released
         `SuperresolutionHybrid8XDC_Warp` (128 → 256 → 512 with the warp torso model), 512² frames, batch 1 per
         device (global 8), lr 1e-5 with 4000-step warmup, ×0.5 every 50k, floor 1e-6, 100k steps.
Discriminator: the `tiny` / released (`full`) DualDiscriminator size at the SR output resolution (64² / 512²),
trained from start_adv − d_lead (tiny 30, full 30k), G adversarial from start_adv (tiny 40, full 40k).
Data: `--config.data.name=array_record:DIR` trains on a dataset built by `python -m r3p.data.build --out DIR`.
Head weights: `--config.init_from=WORKDIR` names a motion-adapter run whose last checkpoint gives the head
(see train/stages/htb_sr.py `load_head`); empty = random head (the tiny smoke run). If that run has an SR
branch (`motion_adapter.py:tiny_sr` or `full`), its head SR blocks (`superresolution.block0/1`) start this
stage's SR, as officially (`load_sr_blocks`; the torso/background/fusion parts start at init). `tiny_sr`'s blocks
are 16/8 wide: add `--config.model.sr_channels=16` to the `tiny` run that starts from it.
Ablations: `:tiny,ablation=no_lip` (lip loss off), `:tiny,ablation=no_src2src` (src2tgt branch only).
"""
from __future__ import annotations

import ml_collections

from configs import common
from configs import motion_adapter

ABLATIONS = {
    "none": {},
    "no_lip": {"loss.lip_mae": 0.0},
    "no_src2src": {"loss.src2src_interval": 1_000_000_000},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, variant="tiny", ablation="none")
  if a.variant not in ("tiny", "full"):
    raise ValueError(f"unknown variant {a.variant!r} (tiny | full)")
  if a.ablation not in ABLATIONS:
    raise ValueError(f"unknown ablation {a.ablation!r}; known: {sorted(ABLATIONS)}")
  tiny = a.variant == "tiny"
  c = common.base_config()
  c.stage = "htb_sr"
  c.variant = a.variant
  c.ablation = a.ablation
  c.init_from = ""   # motion-adapter workdir whose checkpoint provides the frozen head

  c.data = ml_collections.ConfigDict(dict(
      name="synthetic", size=64 if tiny else 512, n_clips=16, n_items=4096, global_batch=2 if tiny else 8,
      torso=True))
  # The head is the stage-2 model of the same variant (same fields as configs/motion_adapter.py).
  c.model = motion_adapter.get_config(a.variant).model
  c.model.render_resolution = 16 if tiny else 128
  c.model.use_sr = False                # the stage-2 SR is replaced by the HTB-SR below
  c.model.sr_channels = 32              # tiny stand-in widths (full: the released SR's fixed widths)
  c.model.sr_w_dim = 16
  c.model.torso_feat = 16
  c.model.torso_hid = 16
  c.model.head_threshold = 0.9          # htbsr_head_threshold
  c.model.d_resolution = 0              # the D judges the SR output: 0 = data.size (tiny: `tiny` D size at 64²)

  scale = 1000 if tiny else 1
  c.total_steps = 200 if tiny else 100_000
  c.optim = ml_collections.ConfigDict(dict(
      lr_g=1e-3 if tiny else 1e-5, lr_d=2e-4, warmup=4000 // scale, decay_every=50_000 // scale, decay=0.5,
      floor=1e-6, b1=0.0, b2=0.99, clip=1.0, d_reg_interval=16,
      # The only optimised group is 'sr' (gated from step sr_start = 0); the stage-2 gates below only shape
      # the logged lr of the empty groups.
      sr_start=0, decoder_start=0, cano_hold=0, cano_hold_lr=0.0, start_adv=40_000 // scale,
      stop_update_i2p=0,
      # D: max(floor, lr_d·16/17·0.5^(step//50k)), β^(16/17), trains from start_adv − d_lead (official 30k).
      d_lead=10_000 // scale))
  c.loss = ml_collections.ConfigDict(dict(
      mse=1.0, unmasked_weight=0.5, lip_mae=0.2,
      lpips=0.1, lip_lpips=0.02,             # perceptual terms: not computed by this trainer (no VGG weights)
      mv_adv=0.003, ref_adv=0.003,           # `lambda_th1kh_mv_adv` (orig 0.003, public 0.001), from start_adv
      r1_gamma=5.0,                          # lazy R1 every optim.d_reg_interval, weight γ·interval = 80
      occlusion_2_entropy=0.001, src2src_interval=4))
  c.log_every = 10 if tiny else 100
  c.ckpt_every = 50 if tiny else 5000
  c.keep_period = 0 if tiny else 50_000
  return common.apply_overrides(c, ABLATIONS[a.ablation])


def get_sweep():
  """Named runs for `python -m train.sweep --config configs/htb_sr.py:tiny` without --sweep."""
  return [{"optim.lr_g": v} for v in (3e-4, 1e-3)]
