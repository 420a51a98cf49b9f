"""python -m train.sweep --sweep_config configs/sweeps/ablations.py:htb_sr --root /tmp/r3p_ablate_htb

Named ablation studies (`get_sweep(arg)`, arg = "<study>[,variant=tiny|full]"); each run names its config
(file:variant,ablation) and its --config overrides. Add --dry_run to only print the launch commands (for a
cluster: --launch="sbatch --wrap '{cmd}'"), `--set total_steps=50` to shorten every run.

Studies:
  motion_adapter  base | no_reg (no SECC/blink/density regularisers) | blink target 0.15 (orig yaml) vs 0.3
                  (public) | SECC perturbation target 0.5 (orig yaml) | lr 3e-4
  htb_sr          base | no_lip (lip loss off) | no_src2src (src2tgt only) | unmasked weight 0.2 (stage-2 value)
  lr              the lr_g grid 1e-4, 3e-4, 1e-3 of both stages
Plane fusion: only 'add' (the released `phase1_plane_fusion_mode`) is implemented in r3p.models.motion_adapter,
so there is no fusion ablation here.
"""
from __future__ import annotations


def _ma(variant: str) -> list[dict]:
  cfg = f"configs/motion_adapter.py:{variant}"
  return [
      {"name": "ma_base", "config": cfg, "params": {}},
      {"name": "ma_no_reg", "config": f"{cfg},ablation=no_reg", "params": {}},
      {"name": "ma_blink0.15", "config": cfg, "params": {"loss.blink_target": 0.15}},
      {"name": "ma_secc0.5", "config": cfg, "params": {"loss.secc_target": 0.5}},
      {"name": "ma_lr3e-4", "config": cfg, "params": {"optim.lr_g": 3e-4}},
  ]


def _htb(variant: str) -> list[dict]:
  cfg = f"configs/htb_sr.py:{variant}"
  return [
      {"name": "htb_base", "config": cfg, "params": {}},
      {"name": "htb_no_lip", "config": f"{cfg},ablation=no_lip", "params": {}},
      {"name": "htb_no_src2src", "config": f"{cfg},ablation=no_src2src", "params": {}},
      {"name": "htb_unmasked0.2", "config": cfg, "params": {"loss.unmasked_weight": 0.2}},
  ]


def _lr(variant: str) -> list[dict]:
  return [{"name": f"{stage}_lr{lr:g}", "config": f"configs/{stage}.py:{variant}", "params": {"optim.lr_g": lr}}
          for stage in ("motion_adapter", "htb_sr") for lr in (1e-4, 3e-4, 1e-3)]


STUDIES = {"motion_adapter": _ma, "htb_sr": _htb, "lr": _lr}


def get_sweep(arg: str | None = None) -> list[dict]:
  parts = [p for p in (arg or "htb_sr").split(",") if p]
  study, variant = parts[0], "tiny"
  for p in parts[1:]:
    k, _, v = p.partition("=")
    if k != "variant" or v not in ("tiny", "full"):
      raise ValueError(f"sweep arg part {p!r}: expected variant=tiny|full")
    variant = v
  if study not in STUDIES:
    raise ValueError(f"unknown ablation study {study!r}; known: {sorted(STUDIES)}")
  return STUDIES[study](variant)
