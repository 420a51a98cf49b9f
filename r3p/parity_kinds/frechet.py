"""Parity of eval.fid's streaming statistics and Fréchet distance against pytorch-fid (float64)."""
from __future__ import annotations

import numpy as np

from r3p.parity_kinds import CaseResult, read_fixture_json


def run(case_dir: str) -> CaseResult:
  from eval import fid
  from eval._parity import finish, load_npz
  meta = read_fixture_json(case_dir)
  x = load_npz(case_dir, "inputs.npz")
  pred, stats = {}, []
  for i, key in ((1, "feats1"), (2, "feats2")):
    rs = fid.RunningStats()
    f = x[key]
    for s in range(0, len(f), 64):  # streaming, as the metric pipeline does it
      rs.update(f[s:s + 64])
    mu, sigma = rs.mu, rs.sigma
    stats.append((mu, sigma))
    pred[f"mu{i}"] = mu
    pred[f"sigma{i}"] = sigma
    pred[f"sigma{i}_diag"] = np.diagonal(sigma)
    idx = meta.get("sigma_probe_index")
    if idx is not None:
      pred[f"sigma{i}_probe"] = sigma[np.ix_(idx, idx)]
  terms = fid.frechet_terms(stats[0][0], stats[0][1], stats[1][0], stats[1][1])
  notes = [f"eps offset branch taken: {terms.pop('eps_offset_used')}"]
  pred.update(terms)
  return finish(case_dir, meta, pred, notes)
