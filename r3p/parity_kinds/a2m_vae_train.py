"""Parity kind `a2m_vae_train`: the training forward of `PitchContourVAEModel` (BatchNorm on batch statistics,
running statistics updated once), with the recorded posterior draw `posterior_noise` [B, 16, T/4] injected.

Compares pred_exp, z_p / m_q / logs_q ([B, T/4, 16]), loss_kl, the task losses mse_exp / lap_exp / l2_reg_exp,
every recorded intermediate, and the BatchNorm running statistics after the step (`bn_after.<module>.<stat>`).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

from r3p.convert.torch_to_nnx import model_variables
from r3p.models import audio2motion as A
from r3p.parity_kinds import CaseResult, compare_all, read_fixture_json
from r3p.parity_kinds.a2m_vae import build_model, load_npz, to_reference_layout, tolerances


def run(case_dir: str) -> CaseResult:
  meta = read_fixture_json(case_dir)
  inp, ref, inter = (load_npz(case_dir, n) for n in ("inputs.npz", "outputs.npz", "intermediates.npz"))
  model = build_model(case_dir)
  hubert = inp["hubert"] if "hubert" in inp else inp["audio"]
  noise = np.transpose(inp["posterior_noise"], (0, 2, 1))

  @nnx.jit
  def fwd(model, hubert, f0, y, y_mask, blink, mouth_amp, noise):
    rec = {}
    out = model.train_forward(hubert, f0, y, y_mask, blink, mouth_amp, noise=noise, train_bn=True, record=rec)
    rec.update(pred_exp=out["pred"], z_p=out["z_p"], m_q=out["m_q"], logs_q=out["logs_q"], loss_kl=out["loss_kl"],
               mse_exp=A.mse_loss(out["pred"], y, y_mask), lap_exp=A.lap_loss(out["pred"], y_mask),
               l2_reg_exp=A.l2_reg_loss(out["pred"], y_mask))
    return rec

  rec = fwd(model, hubert, inp["f0"], inp["y"], inp["y_mask"], inp.get("blink"), inp.get("mouth_amp"), noise)
  mine = {k: np.asarray(v) for k, v in rec.items()}
  variables = model_variables(model)
  for k in list(ref) + list(inter):
    if k.startswith("bn_after."):
      mine[k] = np.asarray(variables[k[len("bn_after."):]][...])
  mine = to_reference_layout(mine, {**ref, **inter})
  tols = tolerances(meta)
  res = compare_all(mine, ref, tols)
  res.update(compare_all(mine, inter, tols))
  return CaseResult(meta["kind"], meta.get("case", os.path.basename(case_dir)), res)
