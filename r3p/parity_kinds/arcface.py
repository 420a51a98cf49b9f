"""Parity of eval.arcface (insightface IResNet) with name-seeded weights."""
from __future__ import annotations

import numpy as np

from r3p.parity_kinds import CaseResult, read_fixture_json


def run(case_dir: str) -> CaseResult:
  import jax
  from eval import arcface
  from eval._parity import finish, load_npz
  from r3p.convert.seeded import load_seeded_state_dict
  meta = read_fixture_json(case_dir)
  model = arcface.build(load_seeded_state_dict(case_dir, verify=True))
  x = load_npz(case_dir, "inputs.npz")
  inter = load_npz(case_dir, "intermediates.npz")
  notes = []
  if "faces_uint8" in x and "input" in x:
    mine = (x["faces_uint8"].astype(np.float32) / 255.0 - 0.5) / 0.5
    d = float(np.abs(mine - np.transpose(x["input"], (0, 2, 3, 1))).max())
    notes.append(f"input preprocessing (u8/255 - 0.5)/0.5 vs stored input: max|Δ| {d:.2e}")
  inp = np.transpose(x["input"], (0, 2, 3, 1)) if "input" in x else x["faces_uint8"]
  with jax.default_matmul_precision("highest"):
    emb, parts = jax.jit(lambda a: model(a, return_parts=True))(inp)
  emb = np.asarray(emb)
  normed = np.asarray(arcface.normalize(emb))
  pred = {"embedding": emb, "embedding_normed": normed, "cosine": normed @ normed.T,
          "fc_out": np.asarray(parts["fc_out"])}
  for i in range(1, 5):
    t = np.transpose(np.asarray(parts[f"layer{i}"][0]), (2, 0, 1))
    pred[f"layer{i}_item0"] = t
    if f"layer{i}_item0_probe_index" in inter:
      pred[f"layer{i}_item0_probe"] = t.reshape(-1)[inter[f"layer{i}_item0_probe_index"]]
  return finish(case_dir, meta, pred, notes)
