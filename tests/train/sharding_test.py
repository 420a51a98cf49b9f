"""Param shardings of the tiny motion-adapter config on the (data=4, fsdp=2) mesh == the golden file."""
import json
import os

import jax
import numpy as np
import pytest

from r3p import parallel
from tests.train.common import micro_config
from train.state import Trainer

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "golden", "motion_adapter_tiny_param_shardings.json")


@pytest.fixture(scope="module")
def trainer():
  cfg = micro_config()
  return Trainer(cfg, parallel.make_mesh({"data": 4, "fsdp": 2}))


def test_param_shardings_match_golden(trainer):
  got = json.loads(trainer.param_shardings_json())
  if os.environ.get("R3P_UPDATE_GOLDEN"):
    with open(GOLDEN, "w") as f:
      f.write(trainer.param_shardings_json())
  with open(GOLDEN) as f:
    want = json.load(f)
  assert got == want
  # Some params really are sharded over fsdp (the table is not a no-op).
  assert any("fsdp" in v for v in got.values())


def test_opt_state_follows_param_shardings(trainer):
  p = trainer.state_shardings["params"]
  leaves = jax.tree_util.tree_leaves_with_path(trainer.state_shardings["opt"],
                                               is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
  w = p["secc_img2plane_backbone"]["fuse_head"]["linear_fuse"]["conv"]["weight"]
  hits = [s for path, s in leaves if jax.tree_util.keystr(path).endswith(
      "['secc_img2plane_backbone']['fuse_head']['linear_fuse']['conv']['weight']")]
  assert len(hits) == 2 and all(s.spec == w.spec for s in hits)  # Adam mu, nu
  assert np.prod([1]) == 1
