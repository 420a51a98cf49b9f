"""Parity kind `audio_features`: mel, f0 and coarse pitch of a 16-kHz clip (r3p.audio.features).

Inputs: `wav_int16` [N, C]. Every array of outputs.npz is compared with the fixture's tolerances; the integer
coarse-pitch intermediates (`f0_coarse`, `f0_coarse_torch_f32`) must match exactly and are reported too.
"""
from __future__ import annotations

import os

import numpy as np

from r3p.audio import features as F
from r3p.parity_kinds import CaseResult, compare, compare_all, read_fixture_json


def compute(wav_int16: np.ndarray) -> dict[str, np.ndarray]:
  samples = np.asarray(wav_int16, np.float64) / 32768.0
  if samples.ndim == 1:
    samples = samples[:, None]
  audio = F.Audio(samples, F.SAMPLE_RATE)
  feats = F.extract_features(audio)
  return {
      "wav_mono": feats.wav_mono,
      "wav_padded": F.pad_wav_for_f0(feats.wav_mono),
      "mel": feats.mel,
      "f0": feats.f0.astype(np.float32),
      "f0_infer": feats.f0_infer,
      "f0_coarse": F.f0_to_coarse(feats.f0),
      "f0_coarse_torch_f32": F.f0_to_coarse(feats.f0.astype(np.float32), torch_rounding=True),
  }


def run(case_dir: str) -> CaseResult:
  meta = read_fixture_json(case_dir)
  tols = dict(meta.get("tolerances", {}))
  # Not listed in the fixture's table: exact by construction (zero padding of exact values / f0 itself).
  tols.setdefault("wav_padded", tols.get("wav_mono", {"atol": 1e-7}))
  tols.setdefault("f0_infer", tols.get("f0"))
  tols = {k: {"atol": v.get("atol", 0.0), "rtol": v.get("rtol", 0.0)} for k, v in tols.items() if v}
  with np.load(os.path.join(case_dir, "inputs.npz")) as z:
    wav = z["wav_int16"]
  with np.load(os.path.join(case_dir, "outputs.npz")) as z:
    ref = {k: z[k] for k in z.files}
  mine = compute(wav)
  res = compare_all(mine, ref, tols)
  notes = []
  ip = os.path.join(case_dir, "intermediates.npz")
  if os.path.exists(ip):
    with np.load(ip) as z:
      for k in ("f0_coarse", "f0_coarse_torch_f32"):
        if k in z.files:
          res[k] = compare(mine[k], z[k], atol=0.0)
      if "f0" in ref:
        voiced_ok = bool(np.array_equal(mine["f0"] > 0, ref["f0"] > 0))
        notes.append(f"voicing decisions identical: {voiced_ok}")
        if not voiced_ok:
          res["f0"].passed = False
  return CaseResult(meta["kind"], meta.get("case", os.path.basename(case_dir)), res, notes)
