"""Official-format checkpoint -> `python -m r3p.convert` (Orbax) -> the network that `r3p infer --ckpt_dir` loads.

The r3p_model fixture's name-seeded weights are written by the test in the official `model_ckpt_steps_*.ckpt`
layout ({'state_dict': {'model': ...}}, torch zip format) with `save_torch_checkpoint`; the converted network must
hold exactly the same values as the directly-loaded one (bit for bit), and (slow) give the fixture's outputs within
the r3p_model tolerances."""
import numpy as np
import pytest
from flax import nnx

from r3p.convert import cli as convert_cli
from r3p.convert.seeded import load_seeded_state_dict
from r3p.convert.torch_ckpt import save_torch_checkpoint
from tests.conftest import FIXTURES

CASES = sorted(p.parent for p in (FIXTURES / "r3p_model").glob("*/fixture.json")) if FIXTURES.exists() else []


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  if not CASES:
    pytest.skip(f"no r3p_model fixtures under {FIXTURES}")
  sd = load_seeded_state_dict(str(CASES[0]), verify=True)
  d = tmp_path_factory.mktemp("official")
  (d / "torso").mkdir()
  save_torch_checkpoint({"state_dict": {"model": sd}, "global_step": 100}, d / "torso" / "model_ckpt_steps_100.ckpt")
  rc = convert_cli.main(["--torso_ckpt", str(d / "torso"), "--out", str(d / "r3p")])
  assert rc == 0
  return sd, d


@pytest.mark.slow  # ~2.5 min on a loaded 2-core CPU: writes, reads and converts 150 M parameters
def test_converted_equals_direct_load(converted):
  from r3p.models import portrait
  sd, d = converted
  direct = nnx.to_pure_dict(nnx.state(portrait.build(sd)))
  loaded = nnx.to_pure_dict(nnx.state(convert_cli.load_torso(d / "r3p")))
  a = dict(nnx.traversals.flatten_mapping(direct))
  b = dict(nnx.traversals.flatten_mapping(loaded))
  assert a.keys() == b.keys() and len(a) > 500
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=str(k))
  man = convert_cli.load_manifest(d / "r3p")
  assert man["networks"]["torso"]["source"].endswith("model_ckpt_steps_100.ckpt")


@pytest.mark.slow
def test_converted_network_matches_fixture(converted):
  from r3p.fixture_io import FixtureCase
  from r3p.models import portrait
  from r3p.parity_kinds import r3p_model
  _, d = converted
  model = convert_cli.load_torso(d / "r3p")
  case = FixtureCase(str(CASES[0]))
  img, camera, cond = portrait.inputs_from_official(case.inputs)
  out = portrait.to_official(r3p_model.jitted_forward(model)(img, camera, cond, r3p_model.draws_from_rng(case.rng)))
  for k in case.outputs.files:
    tol = r3p_model.DEFAULT_TOLERANCES.get(k, 1e-4)
    err = float(np.abs(out[k] - case.outputs[k]).max())
    print(f"{k}: max|Δ| {err:.2e} (tolerance {tol:g})")
    assert err <= tol, k


@pytest.mark.parametrize("case", ["garbage", "truncated", "other_model", "missing_key", "empty_dir"])
def test_bad_checkpoints_one_line(tmp_path, capsys, case):
  d = tmp_path / "ck"
  d.mkdir()
  f = d / "model_ckpt_steps_1.ckpt"
  if case == "garbage":
    f.write_bytes(b"definitely not a checkpoint")
  elif case == "truncated":
    save_torch_checkpoint({"state_dict": {"model": {"a.weight": np.ones((64, 64), np.float32)}}}, f)
    f.write_bytes(f.read_bytes()[:200])
  elif case == "other_model":  # an A2M-like checkpoint given as the torso one
    save_torch_checkpoint({"state_dict": {"model": {"vae.encoder.pre_net.weight": np.ones((4, 4), np.float32)}}}, f)
  elif case == "missing_key":
    save_torch_checkpoint({"state_dict": {"model": {"cano_img2plane_backbone.x": np.ones((2,), np.float32)}}}, f)
  rc = convert_cli.main(["--torso_ckpt", str(d), "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and err[0].startswith("python -m r3p.convert: error: "), err
  print(case, "->", err[0])
  assert not (tmp_path / "out").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
