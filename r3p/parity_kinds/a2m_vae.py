"""Parity kind `a2m_vae`: inference of the audio-to-motion VAE (`PitchContourVAEModel`), seeded weights.

Inputs: hubert [B, Ta, 1024], f0 [B, Ta], blink [B, Ta, 1], y_mask [B, T], mouth_amp [B, 1], temperature, and the
recorded prior draw `prior_noise` [B, 16, T/4] (channels-first, as torch drew it), injected instead of drawing.
Compares `pred_exp` and every recorded intermediate (converted from the official channels-first layouts).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

from r3p.convert.seeded import load_seeded_state_dict
from r3p.models import audio2motion as A
from r3p.parity_kinds import CaseResult, compare_all, read_fixture_json

# Intermediates that the official model holds channels-first ([B, C, T]); r3p is channels-last. (`cond`, the
# cond_proj output, and the outputs z_p / m_q / logs_q are [B, T, C] in the official model too.) Shapes can be
# square (T = C = 128), so the rule goes by name, not by shape.
CHANNELS_FIRST = {"mel_encoder_out", "pitch_encoder_out", "g_sqz", "prior_noise_scaled", "prior_flow_out",
                  "dec_pre_net_out", "decoder_out", "enc_z", "enc_m", "enc_logs", "enc_mask_sqz"}


def build_model(case_dir: str) -> A.PitchContourVAEModel:
  model = A.PitchContourVAEModel(rngs=nnx.Rngs(0))
  A.load_a2m_state_dict(model, load_seeded_state_dict(case_dir))
  return model


def to_reference_layout(mine: dict, ref: dict) -> dict:
  """Transpose r3p's channels-last records to the fixture's channels-first ones where the shapes say so."""
  out = {}
  for k, v in mine.items():
    v = np.asarray(v)
    if k in ref and v.ndim == 3 and k in CHANNELS_FIRST:
      v = v.transpose(0, 2, 1)
    out[k] = v
  return out


def tolerances(meta: dict) -> dict:
  tols = {k: {"atol": v.get("atol", 0.0), "rtol": v.get("rtol", 0.0)} for k, v in meta.get("tolerances", {}).items()}
  tols.setdefault("f0_coarse", {"atol": 0.0})  # integer bins: exact
  return tols


def load_npz(case_dir, name):
  p = os.path.join(case_dir, name)
  if not os.path.exists(p):
    return {}
  with np.load(p) as z:
    return {k: z[k] for k in z.files}


def run(case_dir: str) -> CaseResult:
  meta = read_fixture_json(case_dir)
  inp, ref, inter = (load_npz(case_dir, n) for n in ("inputs.npz", "outputs.npz", "intermediates.npz"))
  model = build_model(case_dir)
  hubert = inp["hubert"] if "hubert" in inp else inp["audio"]
  temperature = float(inp["temperature"]) if "temperature" in inp else float(meta.get("temperature", 1.0))
  noise = np.transpose(inp["prior_noise"], (0, 2, 1))  # [B, 16, T/4] -> [B, T/4, 16]
  graphdef, state = nnx.split(model)

  @jax.jit
  def fwd(state, hubert, f0, y_mask, blink, mouth_amp, noise):
    rec = {}
    pred = nnx.merge(graphdef, state).infer(hubert, f0, y_mask, blink, mouth_amp, temperature=temperature,
                                            noise=noise, record=rec)
    rec["pred_exp"] = pred
    return rec

  rec = fwd(state, hubert, inp["f0"], inp["y_mask"], inp.get("blink"), inp.get("mouth_amp"), noise)
  mine = to_reference_layout({k: np.asarray(v) for k, v in rec.items()}, {**ref, **inter})
  tols = tolerances(meta)
  tols.setdefault("prior_noise_scaled", {"atol": 1e-7, "rtol": 1e-6})
  res = compare_all(mine, ref, tols)
  res.update(compare_all(mine, inter, tols))
  return CaseResult(meta["kind"], meta.get("case", os.path.basename(case_dir)), res)
