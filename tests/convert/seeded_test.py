import json

import numpy as np
import pytest

from r3p.convert import seeded
from tests.conftest import FIXTURES


def _spec_dirs():
  return sorted(p.parent for p in FIXTURES.glob("*/*/weights_spec.json")) if FIXTURES.exists() else []


@pytest.mark.parametrize("case", _spec_dirs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_rebuilt_weights_match_checksum(case):
  sd = seeded.load_seeded_state_dict(str(case), verify=True)  # raises on mismatch
  spec = json.load(open(case / "weights_spec.json"))
  assert list(sd) == [e["key"] for e in spec["tensors"]]


def test_rules_and_checksum_change(tmp_path):
  spec = {"format": seeded.FORMAT, "seed": 3, "tensors": [
      {"key": "a.weight", "shape": [2, 3], "dtype": "float32", "rule": "normal", "mean": 1.0, "std_eff": 0.5},
      {"key": "bn.running_var", "shape": [4], "dtype": "float32", "rule": "abs_normal", "center": 1.0,
       "scale": 0.2, "offset": 0.05},
      {"key": "bn.num_batches_tracked", "shape": [], "dtype": "int64", "rule": "const", "value": 0},
      {"key": "buf", "shape": [2], "dtype": "float32", "rule": "stored"}]}
  np.savez(tmp_path / "weights_stored.npz", buf=np.array([1.0, 2.0], np.float32))
  (tmp_path / "weights_spec.json").write_text(json.dumps(spec))
  sd = seeded.load_seeded_state_dict(str(tmp_path))
  assert sd["a.weight"].dtype == np.float32 and sd["a.weight"].shape == (2, 3)
  assert np.all(sd["bn.running_var"] >= 0.05)
  assert sd["bn.num_batches_tracked"].dtype == np.int64
  np.testing.assert_array_equal(sd["buf"], [1.0, 2.0])
  c1 = seeded.state_dict_checksum(sd)
  sd["buf"] = sd["buf"] + 1
  assert seeded.state_dict_checksum(sd) != c1
  spec["checksum"] = {"sha256": c1}
  (tmp_path / "weights_spec.json").write_text(json.dumps(spec))
  seeded.load_seeded_state_dict(str(tmp_path), verify=True)
  spec["seed"] = 4
  (tmp_path / "weights_spec.json").write_text(json.dumps(spec))
  with pytest.raises(ValueError, match="checksum"):
    seeded.load_seeded_state_dict(str(tmp_path), verify=True)
