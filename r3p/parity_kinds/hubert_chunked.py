"""Parity kind `hubert_chunked`: the official 20-s chunking of HuBERT feature extraction (seeded HuBERT-large).

Inputs: `input_values` [N] (normalised over the whole utterance), `chunks` [n, 2] (the [start, end) ranges the
reference fed, checked against `r3p.models.hubert.chunk_plan`). Output: `last_hidden_state` [(N - 80) // 320,
1024], computed with the single fixed-shape jitted chunk function.
"""
from __future__ import annotations

import os

import numpy as np

from r3p.models import hubert as H
from r3p.parity_kinds import CaseResult, compare_all, read_fixture_json
from r3p.parity_kinds.hubert_large import build_model, tolerances


def run(case_dir: str) -> CaseResult:
  meta = read_fixture_json(case_dir)
  with np.load(os.path.join(case_dir, "inputs.npz")) as z:
    x = z["input_values"].astype(np.float32)
    chunks = z["chunks"] if "chunks" in z.files else None
  with np.load(os.path.join(case_dir, "outputs.npz")) as z:
    ref = {k: z[k] for k in z.files}
  notes = []
  plan = H.chunk_plan(x.shape[0])
  if chunks is not None:
    same = [tuple(map(int, c)) for c in chunks] == plan
    notes.append(f"chunk plan {'matches' if same else 'DIFFERS from'} the reference: {plan}")
  model = build_model(case_dir, meta)
  mine = {"last_hidden_state": H.extract_hubert(H.HubertChunkRunner(model), x, progress=False)}
  res = compare_all(mine, ref, tolerances(meta))
  if chunks is not None and not same:
    for r in res.values():
      r.passed = False
  return CaseResult(meta["kind"], meta.get("case", os.path.basename(case_dir)), res, notes)
