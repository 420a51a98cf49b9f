"""Metric networks with seeded random weights: LPIPS(x, x) = 0 and grows with noise; CSIM(x, x) = 1;
weight conversion from torch-format files built here (torch-free)."""
import numpy as np
import pytest

from r3p.convert.torch_ckpt import save_torch_checkpoint


@pytest.fixture(scope="module")
def alex():
  from eval import lpips
  return lpips.build("alex", None, seed=0)


def test_lpips_identity_and_monotonic(alex):
  from eval import lpips
  f = lpips.distance_fn(alex)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 255, (2, 64, 64, 3)).astype(np.uint8)
  n1 = np.clip(x + rng.normal(0, 5, x.shape), 0, 255).astype(np.uint8)
  n2 = np.clip(x + rng.normal(0, 40, x.shape), 0, 255).astype(np.uint8)
  d0, d1, d2 = (np.asarray(f(x, y)) for y in (x, n1, n2))
  assert np.all(d0 < 1e-9) and np.all(d1 > 1e-6) and np.all(d2 > d1)


def test_convert_weights_lpips_from_torch_files(alex, tmp_path):
  from eval import convert_weights, weights
  from r3p.convert.torch_to_nnx import export_state_dict
  sd = export_state_dict(alex)
  backbone = {k: v for k, v in sd.items() if k.startswith("features.")}
  backbone["classifier.1.weight"] = np.zeros((4, 4), np.float32)  # torchvision extras are dropped
  save_torch_checkpoint(backbone, tmp_path / "alexnet.pth")
  save_torch_checkpoint({k: v for k, v in sd.items() if k.startswith("lin")}, tmp_path / "alex.pth",
                        legacy=True)
  rc = convert_weights.main(["--alexnet", str(tmp_path / "alexnet.pth"), "--lpips_alex", str(tmp_path / "alex.pth"),
                             "--out", str(tmp_path / "w")])
  assert rc == 0
  got = weights.load_npz_state_dict(str(tmp_path / "w" / "lpips_alex.npz"))
  assert set(got) == set(sd) and all(np.array_equal(got[k], sd[k]) for k in sd)


def test_convert_weights_refuses_wrong_file(tmp_path, capsys):
  from eval import convert_weights
  (tmp_path / "x.pth").write_bytes(b"not a checkpoint")
  rc = convert_weights.main(["--syncnet", str(tmp_path / "x.pth"), "--out", str(tmp_path / "w")])
  assert rc == 1 and "not a PyTorch checkpoint" in capsys.readouterr().err
  save_torch_checkpoint({"foo.weight": np.zeros(3, np.float32)}, tmp_path / "y.pth")
  rc = convert_weights.main(["--syncnet", str(tmp_path / "y.pth"), "--out", str(tmp_path / "w")])
  assert rc == 1 and "missing key" in capsys.readouterr().err


@pytest.mark.slow
def test_csim_identity_random_weights():
  from eval import arcface
  f = arcface.embed_fn(arcface.build(None, arch="r50", seed=0))
  x = np.random.default_rng(1).integers(0, 255, (2, 112, 112, 3)).astype(np.uint8)
  e = np.asarray(f(x))
  assert abs(float(e[0] @ e[0]) - 1) < 1e-5
