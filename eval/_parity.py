"""Helpers shared by the eval parity handlers (r3p/parity_kinds/<kind>.py)."""
from __future__ import annotations

import os

import numpy as np

from r3p.parity_kinds import CaseResult, compare_all, read_fixture_json


def load_npz(case_dir: str, name: str) -> dict[str, np.ndarray]:
  p = os.path.join(case_dir, name)
  if not os.path.exists(p):
    return {}
  with np.load(p) as z:
    return {k: z[k] for k in z.files}


def fixture_tolerances(meta: dict) -> dict[str, dict]:
  """fixture.json["tolerances"] -> {key: {atol, rtol}} (extra fields such as notes dropped)."""
  out = {}
  for k, t in meta.get("tolerances", {}).items():
    out[k] = {"atol": float(t.get("atol", 0.0)), "rtol": float(t.get("rtol", 0.0))}
  return out


def finish(case_dir: str, meta: dict, pred: dict, notes=None, keys=None) -> CaseResult:
  """Compare every output (and every intermediate that has a tolerance) with the fixture's own tolerances."""
  tols = fixture_tolerances(meta)
  ref = load_npz(case_dir, "outputs.npz")
  inter = load_npz(case_dir, "intermediates.npz")
  for k, v in inter.items():
    if k in tols and k in pred:
      ref[k] = v
  if keys is not None:
    ref = {k: v for k, v in ref.items() if k in keys}
  res = compare_all(pred, ref, tols)
  return CaseResult(meta["kind"], meta.get("case", os.path.basename(os.path.normpath(case_dir))), res,
                    list(notes or []))
