"""Parity of eval.image_metrics (PSNR / SSIM) against scikit-image's numbers."""
from __future__ import annotations

import numpy as np

from r3p.parity_kinds import CaseResult, read_fixture_json


def run(case_dir: str) -> CaseResult:
  from eval import image_metrics as im
  from eval._parity import finish, load_npz
  meta = read_fixture_json(case_dir)
  x = load_npz(case_dir, "inputs.npz")
  ref, test = x["ref"], x["test"]
  m, p, s = (np.asarray(v, np.float64) for v in im.psnr_ssim_uint8(ref, test))
  per_ch = np.asarray(im.ssim_per_channel(ref.astype(np.float32) / 255.0, test.astype(np.float32) / 255.0),
                      np.float64)
  i = int(meta.get("map_item", 0))
  smap = np.asarray(im.ssim_map(ref[i:i + 1].astype(np.float32) / 255.0, test[i:i + 1].astype(np.float32) / 255.0))[0]
  pred = {"mse": m, "psnr": p, "ssim": s, "psnr_mean": np.mean(p[np.isfinite(p)]) if np.isfinite(p).any() else np.inf,
          "ssim_mean": np.mean(s), "ssim_map": smap, "ssim_per_channel": per_ch}
  return finish(case_dir, meta, pred)
