"""Parity handlers, one module per fixture kind: `r3p/parity_kinds/<kind>.py` defines

    def run(case_dir: str) -> r3p.parity_kinds.CaseResult

`python -m r3p.parity` imports the module named after `fixture.json["kind"]`. Handlers must be general: nothing
keyed on a case name, seed or shape. They read the case's own files (weights spec, inputs, recorded draws) and
compare every array the reference outputs file holds.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping

import numpy as np


@dataclasses.dataclass
class KeyResult:
  max_abs: float
  mean_abs: float
  shape: tuple[int, ...]
  tol: str
  passed: bool


@dataclasses.dataclass
class CaseResult:
  kind: str
  case: str
  outputs: dict[str, KeyResult]
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def passed(self) -> bool:
    return bool(self.outputs) and all(r.passed for r in self.outputs.values())

  def to_json(self) -> dict:
    return {"kind": self.kind, "case": self.case,
            "outputs": {k: {"max_abs": r.max_abs, "mean_abs": r.mean_abs, "shape": list(r.shape)}
                        for k, r in self.outputs.items()},
            "pass": self.passed}


def read_fixture_json(case_dir: str) -> dict:
  with open(os.path.join(case_dir, "fixture.json")) as f:
    return json.load(f)


def compare(pred, ref, *, atol: float = 0.0, rtol: float = 0.0, rel_to_max: float | None = None) -> KeyResult:
  """Compare one array. Passes iff every |pred - ref| <= atol + rtol * |ref|, or, with `rel_to_max`,
  max|Δ| <= rel_to_max * max|ref| (the fixtures' 'relative to the record's max |value|' bounds)."""
  pred = np.asarray(pred, np.float64)
  ref = np.asarray(ref, np.float64)
  if pred.shape != ref.shape:
    return KeyResult(float("inf"), float("inf"), tuple(ref.shape),
                     f"shape {tuple(pred.shape)} != {tuple(ref.shape)}", False)
  d = np.abs(pred - ref)
  finite_ok = bool(np.all(np.isfinite(pred) == np.isfinite(ref)))
  dd = np.where(np.isfinite(d), d, 0.0)
  mx = float(dd.max()) if d.size else 0.0
  mean = float(dd.mean()) if d.size else 0.0
  if rel_to_max is not None:
    bound = rel_to_max * float(np.abs(ref[np.isfinite(ref)]).max()) if np.isfinite(ref).any() else 0.0
    ok = mx <= bound
    tol = f"<= {rel_to_max:g} x max|ref| ({bound:.3g})"
  else:
    ok = bool(np.all(dd <= atol + rtol * np.abs(np.where(np.isfinite(ref), ref, 0.0))))
    tol = f"atol {atol:g}" + (f" rtol {rtol:g}" if rtol else "")
  return KeyResult(mx, mean, tuple(ref.shape), tol, ok and finite_ok)


def compare_all(pred: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], tols: Mapping[str, dict],
                default: dict | None = None) -> dict[str, KeyResult]:
  """Compare every key of `ref` (a key missing from `pred` fails). `tols[key]` = kwargs of `compare`."""
  out = {}
  for k in ref:
    t = tols.get(k, default)
    if t is None:
      out[k] = KeyResult(float("inf"), float("inf"), tuple(np.shape(ref[k])), "no tolerance known", False)
    elif k not in pred:
      out[k] = KeyResult(float("inf"), float("inf"), tuple(np.shape(ref[k])), "not produced", False)
    else:
      out[k] = compare(pred[k], ref[k], **t)
  return out
