"""Parity kind `syncnet`: Landmark-HuBERT SyncNet embeddings, cosine and BCE sync losses (seeded weights).

Inputs: hubert [B, 10, 1024], mouth_lm [B, 5, 1404], labels [B]. Outputs, in eval mode (running statistics) and
with suffix `_train` in train mode (batch statistics): audio_embedding, mouth_embedding, cosine,
sync_loss_label1 (BCE vs 1 per clip), sync_loss_labels_mean (mean BCE vs labels).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.convert.seeded import load_seeded_state_dict
from r3p.convert.torch_to_nnx import load_state_dict
from r3p.models.syncnet import LandmarkHubertSyncNet
from r3p.parity_kinds import CaseResult, compare_all, read_fixture_json
from r3p.parity_kinds.a2m_vae import load_npz, tolerances


def build_model(sd: dict) -> LandmarkHubertSyncNet:
  lm_dim = sd["mouth_encoder.0.conv_block.0.weight"].shape[1]
  audio_dim = sd["hubert_encoder.0.conv_block.0.weight"].shape[1]
  base = sd["hubert_encoder.0.conv_block.0.weight"].shape[0]
  out_dim = max(int(k.split(".")[1]) for k in sd if k.startswith("hubert_encoder."))
  out_dim = sd[f"hubert_encoder.{out_dim}.conv_block.0.weight"].shape[0]
  n_blocks = sum(1 for k in sd if k.startswith("hubert_encoder.") and k.endswith("conv_block.0.weight"))
  per_block = (n_blocks - 6) // 3 + 1  # 2 stem + 3 x (1 + (n - 1)) + 4 head blocks = 3 n + 6 -> n
  model = LandmarkHubertSyncNet(lm_dim, audio_dim, per_block, base, out_dim, rngs=nnx.Rngs(0))
  load_state_dict(model, sd)
  return model


def run(case_dir: str) -> CaseResult:
  meta = read_fixture_json(case_dir)
  inp, ref = load_npz(case_dir, "inputs.npz"), load_npz(case_dir, "outputs.npz")
  model = build_model(load_seeded_state_dict(case_dir))
  labels = inp.get("labels", np.ones(inp["hubert"].shape[0], np.float32))
  graphdef, state = nnx.split(model)

  @jax.jit
  def fwd(state, hubert, mouth, labels):
    out = {}
    for train, sfx in ((False, ""), (True, "_train")):
      m = nnx.merge(graphdef, state)
      a, mo = m(hubert, mouth, train=train)
      l1, cos = m.sync_loss(a, mo, 1.0)
      ll, _ = m.sync_loss(a, mo, labels)
      out.update({f"audio_embedding{sfx}": a, f"mouth_embedding{sfx}": mo, f"cosine{sfx}": cos,
                  f"sync_loss_label1{sfx}": l1, f"sync_loss_labels_mean{sfx}": jnp.mean(ll)})
    return out

  mine = {k: np.asarray(v) for k, v in fwd(state, inp["hubert"], inp["mouth_lm"], labels).items()}
  res = compare_all(mine, ref, tolerances(meta))
  return CaseResult(meta["kind"], meta.get("case", os.path.basename(case_dir)), res)
