"""Parity of eval.syncnet_v2 (SyncNet v2 + SyncNetInstance.evaluate's Sync-C / Sync-D) with seeded weights."""
from __future__ import annotations

import numpy as np

from r3p.parity_kinds import CaseResult, read_fixture_json


def run(case_dir: str) -> CaseResult:
  from eval import syncnet_v2 as sn
  from eval._parity import finish, load_npz
  from r3p.convert.seeded import load_seeded_state_dict
  meta = read_fixture_json(case_dir)
  model = sn.build(load_seeded_state_dict(case_dir, verify=True))
  x = load_npz(case_dir, "inputs.npz")
  res = sn.evaluate(model, x["frames_bgr"], x["audio"], batch_size=int(meta.get("batch_size", 20)),
                    vshift=int(meta.get("vshift", sn.VSHIFT)))
  return finish(case_dir, meta, res, [f"windows {len(res['dists'])}, offset {int(res['offset'])}, "
                                      f"Sync-C {float(res['conf']):.4f}, Sync-D {float(res['minval']):.4f}"])
