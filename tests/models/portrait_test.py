"""Whole-network parity against every r3p_model fixture case, the strict loader, and the sharded forward.

The model is built and jit-compiled once per batch size for the session (module-scoped fixtures).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r3p.convert import torch_to_nnx as t2n
from r3p.convert.seeded import load_seeded_state_dict
from r3p.fixture_io import FixtureCase
from r3p.models import portrait
from r3p.parity_kinds import r3p_model
from tests.conftest import FIXTURES

CASES = sorted(p.parent for p in (FIXTURES / "r3p_model").glob("*/fixture.json")) if FIXTURES.exists() else []


@pytest.fixture(scope="module")
def seeded_model():
  if not CASES:
    pytest.skip(f"no r3p_model fixtures under {FIXTURES}")
  sd = load_seeded_state_dict(str(CASES[0]), verify=True)
  return sd, portrait.build(sd)


def test_loader_accounts_for_every_key(seeded_model):
  sd, model = seeded_model
  info = portrait.load_official(model, sd)
  loaded, unused = set(info["loaded"]), set(info["unused"])
  assert not loaded & unused
  for k in sd:
    base = k.rsplit(".", 1)[0]
    ok = k in loaded or k in unused or (k.endswith((".weight_orig", ".weight_u", ".weight_v")) and base + ".weight" in loaded)
    assert ok, f"state-dict key not accounted for: {k}"
  assert len(sd) == 1030


def test_loader_errors_name_the_key(seeded_model):
  sd, model = seeded_model
  k = "decoder.net.0.bias"
  bad = dict(sd)
  bad.pop(k)
  with pytest.raises(t2n.StateDictError, match="decoder.net.0.bias"):
    portrait.load_official(model, bad)
  bad = dict(sd)
  bad[k] = np.zeros((3,), np.float32)
  with pytest.raises(t2n.StateDictError, match="shape mismatch for decoder.net.0.bias"):
    portrait.load_official(model, bad)
  with pytest.raises(t2n.StateDictError, match="unexpected key"):
    portrait.load_official(model, {**sd, "foo.weight": np.zeros(1, np.float32)})
  portrait.load_official(model, sd)  # restore for the other tests


@pytest.fixture(scope="module")
def forward(seeded_model):
  _, model = seeded_model
  return r3p_model.jitted_forward(model)


@pytest.mark.parametrize("case_dir", CASES, ids=lambda p: p.name)
def test_whole_model_parity(case_dir, seeded_model, forward):
  case = FixtureCase(str(case_dir))
  sd_case = load_seeded_state_dict(str(case_dir))
  sd0, _ = seeded_model
  if any(not np.array_equal(sd_case[k], sd0[k]) for k in ("decoder.net.0.weight",)):
    pytest.skip("case has other weights than the session model (covered by python -m r3p.parity)")
  img, camera, cond = portrait.inputs_from_official(case.inputs)
  out = portrait.to_official(forward(img, camera, cond, r3p_model.draws_from_rng(case.rng)))
  for k in case.outputs.files:
    tol = r3p_model.DEFAULT_TOLERANCES[k]
    d = float(np.abs(out[k].astype(np.float64) - case.outputs[k]).max())
    assert d <= tol, f"{case.name}/{k}: max|Δ| {d:.3e} > {tol:g}"
