"""Parity kind `hubert_large`: HuBERT-large forward (seeded weights) on a normalised 16-kHz excerpt.

Inputs: `input_values` [N] float32 (already normalised by the processor rule). Outputs: `last_hidden_state`
[T, 1024]. When the excerpt fits one 20-s chunk the model runs on it unpadded and the recorded intermediates
(`conv_features`, `feature_projection`, `pos_conv_embed`, `layer_input`, `layer_XX_output`) are compared as well;
longer excerpts go through the official chunking (`r3p.models.hubert.extract_hubert`).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

from r3p.convert.seeded import load_seeded_state_dict
from r3p.models import hubert as H
from r3p.parity_kinds import CaseResult, compare_all, read_fixture_json


def build_model(case_dir: str, meta: dict) -> H.HubertModel:
  cfg = H.HubertConfig.from_dict(meta.get("hubert_config", {}))
  sd = load_seeded_state_dict(case_dir)
  model = H.hubert_from_state_dict(sd, cfg)
  del sd
  return model


def forward_recorded(model: H.HubertModel, input_values: np.ndarray) -> dict[str, np.ndarray]:
  graphdef, state = nnx.split(model)

  @jax.jit
  def fwd(state, wav):
    rec = {}
    out = nnx.merge(graphdef, state)(wav, None, rec)
    rec["last_hidden_state"] = out
    return rec

  rec = fwd(state, np.asarray(input_values, np.float32)[None])
  return {k: np.asarray(v[0]) for k, v in rec.items()}


def tolerances(meta: dict) -> dict:
  return {k: {"atol": v.get("atol", 0.0), "rtol": v.get("rtol", 0.0)} for k, v in meta.get("tolerances", {}).items()}


def run(case_dir: str) -> CaseResult:
  meta = read_fixture_json(case_dir)
  with np.load(os.path.join(case_dir, "inputs.npz")) as z:
    x = z["input_values"].astype(np.float32)
  with np.load(os.path.join(case_dir, "outputs.npz")) as z:
    ref = {k: z[k] for k in z.files}
  notes = []
  ip = os.path.join(case_dir, "intermediates.npz")
  inter = {}
  if os.path.exists(ip):
    with np.load(ip) as z:
      inter = {k: z[k] for k in z.files}
  model = build_model(case_dir, meta)
  if len(H.chunk_plan(x.shape[0])) == 1:
    mine = forward_recorded(model, x)
  else:
    mine = {"last_hidden_state": H.extract_hubert(H.HubertChunkRunner(model), x)}
    if inter:
      notes.append("intermediates not compared: the excerpt spans several chunks")
      inter = {}
  tols = tolerances(meta)
  res = compare_all(mine, ref, tols)
  res.update(compare_all(mine, inter, tols))
  return CaseResult(meta["kind"], meta.get("case", os.path.basename(case_dir)), res, notes)
