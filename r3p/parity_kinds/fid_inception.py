"""Parity of eval.inception (pytorch-fid's FID Inception-v3, pool3) with name-seeded weights."""
from __future__ import annotations

import numpy as np

from r3p.parity_kinds import CaseResult, read_fixture_json


def run(case_dir: str) -> CaseResult:
  import jax
  from eval import inception
  from eval._parity import finish, load_npz
  from r3p.convert.seeded import load_seeded_state_dict
  meta = read_fixture_json(case_dir)
  model = inception.build(load_seeded_state_dict(case_dir, verify=True))
  x = np.transpose(load_npz(case_dir, "inputs.npz")["images"], (0, 2, 3, 1))
  with jax.default_matmul_precision("highest"):
    pool3, blocks = jax.jit(lambda im: model(im, return_blocks=True))(x)
  pred = {"pool3": np.asarray(pool3), "resized_item0": np.transpose(np.asarray(blocks["resized"][0]), (2, 0, 1))}
  for name, idx in meta.get("probe_channels", {}).items():
    blk = name.split("_")[0]
    pred[name] = np.transpose(np.asarray(blocks[blk][0]), (2, 0, 1))[np.asarray(idx)]
  return finish(case_dir, meta, pred)
