"""Parity of eval.mfcc (python_speech_features MFCC, float64)."""
from __future__ import annotations

import numpy as np

from r3p.parity_kinds import CaseResult, read_fixture_json


def run(case_dir: str) -> CaseResult:
  from eval import mfcc
  from eval._parity import finish, load_npz
  meta = read_fixture_json(case_dir)
  x = load_npz(case_dir, "inputs.npz")
  p = dict(meta.get("mfcc_params", {}))
  if p.get("winfunc", "ones") != "ones":
    raise ValueError(f"winfunc {p['winfunc']!r} is not supported (python_speech_features' default is ones)")
  kw = {k: p[k] for k in ("samplerate", "winlen", "winstep", "numcep", "nfilt", "nfft", "lowfreq", "highfreq",
                          "preemph", "ceplifter") if k in p}
  if "appendEnergy" in p:
    kw["append_energy"] = bool(p["appendEnergy"])
  c, inter = mfcc.mfcc(x["audio"], return_intermediates=True, **kw)
  pred = {"mfcc": c, "preemph_frames_0to2": inter["preemph_frames"][:3], "powspec_frame0": inter["powspec"][0],
          "fbank_energies_frame0": inter["fbank_energies"][0], "energy": inter["energy"],
          "filterbank": inter["filterbank"]}
  meta = dict(meta)
  tol = dict(meta.get("tolerances", {}))
  # a float64 port is held to the float64 bound, every intermediate too
  f64 = {k: {"atol": float(v.get("atol_float64", v.get("atol", 0))), "rtol": float(v.get("rtol", 0))}
         for k, v in tol.items()}
  default = f64.get("mfcc", {"atol": 1e-9, "rtol": 1e-5})
  meta["tolerances"] = {**{k: default for k in pred}, **f64}
  return finish(case_dir, meta, pred, [f"float64 port held to atol {default['atol']:g} (the fixture's float64 bound)"])
