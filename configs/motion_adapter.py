"""python -m train.main --config configs/motion_adapter.py:tiny --workdir /tmp/r3p_ma_tiny

Stage 2 of Real3D-Portrait (TRAINING §1.3, §2.3): the SECC motion adapter (secc2plane) on top of the canonical
I2P, decoder and SR. Variants:
  tiny — CPU, ~2 min for 200 steps on 2 cores: the embedded synthetic dataset at 64², a tiny conv canonical
         encoder instead of the I2P (Img2PlaneModel has no size option), MiT with dims (8,16,16,16) / depth 1,
         head dim 16, rendering at 32² with 12+12 samples, no SR (the raw-image phase only), global batch 2,
         schedule times scaled ÷1000. Loss: masked L1, perceptual (VGG ÷8 widths, random weights) and lip crops
         on raw + opacity + density + SECC/blink regularisers. Discriminator: the `tiny` DualDiscriminator size
         (channels 8/16/32/32, 2 mapping layers) at the render resolution; with no SR, both of its slots see the
         raw render (fake) / the GT resized to the render resolution (real). NB: with `two_stage_training`
         (released) and no SR, the G freezes entirely from start_adv (only the D trains); adversarial smoke runs
         use `--config.optim.start_adv=0 --config.optim.two_stage_training=False`, or `tiny_sr`.
  tiny_sr — `tiny` with the SR branch (`model.use_sr`): render 16² (12+12 samples), a small head-only SR
         (`r3p.models.superres.SuperresolutionHybrid8XDC`, 16 → 32 → 64, channels 16/8, w_dim 16, ones ws) to
         the 64² data; SR masked L1 / perceptual (at 64²) / lip crops from the SR image, raw masked L1 /
         perceptual at 16², the D (tiny size) at 64² on SR ⊕ raw. The released two-stage phase applies: from
         start_adv (200) only the SR trains, and the mv SR L1/perceptual terms are 0. Measured: 200 steps in
         7.2 min wall (compile included) on 2 loaded cores, total loss 1.71 (step 10) -> 0.49 (step 200).
  full — the released sizes (I2P, MiT-b0, OSGDecoder, 128² × 48+48 render, the head-only SR 128 → 256 → 512
         with channels 256/128, w_dim 512, `superresolution.block{0,1}.*` as the released keys), batch 1 per
         device, released schedule (lr 1e-4, warmup 4000, ×0.95 / 5k, floor 5e-6, SR from 30k, max 250k), the
         released D (512², channel_base 32768, max 512, 8 mapping layers) on SR ⊕ raw. Used for the compiled
         memory/cost analysis (`python -m train.main --config configs/motion_adapter.py:full --analyze_only`).
Ablations: `:tiny,ablation=no_reg` (no SECC/blink/density regularisers), `no_lpips` (no perceptual terms).
"""
from __future__ import annotations

import ml_collections

from configs import common

ABLATIONS = {
    "none": {},
    "no_reg": {"loss.density": 0.0, "loss.secc_target": 0.0, "loss.blink_target": 0.0},
    "no_lpips": {"loss.lpips_raw": 0.0, "loss.lpips": 0.0, "loss.lip_lpips": 0.0},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, variant="tiny", ablation="none")
  c = common.base_config()
  c.stage = "motion_adapter"
  c.variant = a.variant
  c.ablation = a.ablation
  if a.variant not in ("tiny", "tiny_sr", "full"):
    raise ValueError(f"unknown variant {a.variant!r} (tiny | tiny_sr | full)")
  tiny = a.variant in ("tiny", "tiny_sr")
  sr = a.variant != "tiny"

  c.data = ml_collections.ConfigDict(dict(
      name="synthetic", size=64 if tiny else 512, n_clips=16, n_items=4096, global_batch=2 if tiny else 8))
  c.model = ml_collections.ConfigDict(dict(
      tiny=tiny,
      cano_channels=16,                               # tiny conv canonical encoder width
      mit_dims=(8, 16, 16, 16) if tiny else (32, 64, 160, 256),
      mit_heads=(1, 1, 1, 1) if tiny else (1, 2, 5, 8),
      mit_mlp_ratios=(2, 2, 2, 2) if tiny else (4, 4, 4, 4),
      mit_depths=(1, 1, 1, 1) if tiny else (2, 2, 2, 2),
      mit_sr_ratios=(8, 4, 2, 1),
      head_dim=16 if tiny else 256,
      render_resolution=(16 if sr else 32) if tiny else 128,
      n_coarse=12 if tiny else 48,
      n_fine=12 if tiny else 48,
      # Head-only SR (`superresolution`, render r -> 4r; the data must be 4r): block widths and w_dim.
      use_sr=sr,
      sr_block_channels=(16, 8) if tiny else (256, 128),
      sr_block_w_dim=16 if tiny else 512,
      # Dual discriminator (TRAINING §2.1.4): size preset of r3p.models.discriminator.SIZES, its input
      # resolution (0 = the G's output resolution: SR 4r with use_sr, else the render resolution), camera noise
      # in batch stds.
      d_size="tiny" if tiny else "full",
      d_resolution=0 if tiny else 512,
      disc_c_noise=1.0,
      d_mbstd_group=2,
  ))
  scale = 1000 if tiny else 1
  c.total_steps = 200 if tiny else 250_000
  c.optim = ml_collections.ConfigDict(dict(
      lr_g=1e-3 if tiny else 1e-4, lr_d=2e-4, warmup=4000 // scale, decay_every=5000 // scale, decay=0.95,
      floor=5e-6, cano_hold=6000 // scale, cano_hold_lr=5e-6, decoder_start=6000 // scale,
      sr_start=30000 // scale, start_adv=200_000 // scale, stop_update_i2p=70_000 // scale,
      b1=0.0, b2=0.99, clip=1.0, d_reg_interval=16, two_stage_training=True,
      # D: Adam(lr_d·c, β**c), c = 16/17 (lazy R1 every d_reg_interval), lr max(floor, ·decay^(step//decay_every))
      # of the global step, clip `clip`; it trains from step start_adv − d_lead (official 10k before the G adv).
      d_lead=10_000 // scale))
  c.loss = ml_collections.ConfigDict(dict(
      mse=1.0, mse_raw=1.0, unmasked_weight=0.2, weights_l1=0.1, weights_entropy=0.01, density=0.25 * 4,
      reg_interval=4, secc_target=0.0, blink_target=0.3, lambda_lr=0.01, lambda_init=1e-3, src2src_interval=16,
      # perceptual (vgg19_v2, TRAINING §2.1.1) on the raw image, the SR image (`lpips`, with use_sr) and the lip
      # crops (§2.1.3; from the SR image with use_sr, else from the raw image). `tiny`: VGG widths ÷8, random
      # weights, evaluated at 32² (`tiny_sr`: 64², its SR size; released: full widths, 512², user-supplied
      # converted weights). `mse` weighs the SR masked L1, `mse_raw` the raw one.
      lpips=0.1, lpips_raw=0.1, lip_mae=0.5, lip_lpips=0.05,
      lpips_size=(64 if sr else 32) if tiny else 512, vgg_width_div=8 if tiny else 1,
      lip_crop_size=16 if tiny else 64, vgg19_weights="", vggface_weights="",
      # adversarial (§2.3): non-saturating G terms from start_adv (`lambda_th1kh_mv_adv` for both branches),
      # lazy R1 with γ = 5 every optim.d_reg_interval steps, weighted γ·interval.
      mv_adv=0.002, ref_adv=0.002, r1_gamma=5.0))
  c.log_every = 10 if tiny else 100
  c.ckpt_every = 50 if tiny else 5000
  c.keep_period = 0 if tiny else 50_000
  if tiny:
    c.mesh.data = -1
  return common.apply_overrides(c, ABLATIONS[a.ablation])


def get_sweep():
  """Named runs for `python -m train.sweep --config configs/motion_adapter.py:tiny` without --sweep."""
  return [{"optim.lr_g": v} for v in (3e-4, 1e-3)]
