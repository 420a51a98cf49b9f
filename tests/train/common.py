"""Shared helpers for the training tests: a micro config (smallest sizes that keep every code path)."""
from __future__ import annotations

from configs import common, motion_adapter


def micro_config(variant: str = "tiny", **overrides):
  """The motion-adapter `variant` (`tiny`, `tiny_sr`) at micro sizes, then `overrides` ({"a.b": value})."""
  cfg = motion_adapter.get_config(variant)
  cfg.data.size = 32
  cfg.data.global_batch = 8
  cfg.data.n_items = 64
  cfg.model.render_resolution = 16
  cfg.model.n_coarse = 6
  cfg.model.n_fine = 6
  cfg.progress = False
  cfg.async_checkpointing = False
  return common.apply_overrides(cfg, overrides)
