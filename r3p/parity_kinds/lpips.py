"""Parity of eval.lpips (LPIPS v0.1 AlexNet / VGG16) against the lpips package with name-seeded weights."""
from __future__ import annotations

import numpy as np

from r3p.parity_kinds import CaseResult, read_fixture_json


def run(case_dir: str) -> CaseResult:
  import jax
  from eval import lpips
  from eval._parity import finish, load_npz
  from r3p.convert.seeded import load_seeded_state_dict
  meta = read_fixture_json(case_dir)
  sd = load_seeded_state_dict(case_dir, verify=True)
  net = meta.get("net") or ("vgg" if "features.28.weight" in sd else "alex")
  model = lpips.build(net, sd)
  x = load_npz(case_dir, "inputs.npz")
  a, b = (np.transpose(x[k], (0, 2, 3, 1)) for k in ("in0", "in1"))
  with jax.default_matmul_precision("highest"):
    dist, parts = model(a, b, return_parts=True)
    spat = model(a[:1], b[:1], spatial=True)
  nchw = lambda t: np.transpose(np.asarray(t), (0, 3, 1, 2))
  n = a.shape[0]
  f = parts["feats"][0]
  pred = {"distance": np.asarray(dist), "distance_spatial_item0": np.asarray(spat)[:, None],
          "per_layer": np.asarray(parts["per_layer"]), "scaled_in0": nchw(parts["scaled_in0"]),
          "scaled_in1": nchw(parts["scaled_in1"]), "feat0_layer1_item0": nchw(f[:1])[0],
          "feat1_layer1_item0": nchw(f[n:n + 1])[0]}
  return finish(case_dir, meta, pred)
