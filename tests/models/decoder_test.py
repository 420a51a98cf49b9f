"""OSGDecoder: torch names load via the generic loader, equalised-LR gains, output transform; parity vs the
fixture's teacher-forced decoder records is in tests/render/renderer_parity_test.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import shared_path

from r3p.convert.torch_to_nnx import StateDictError, export_state_dict, load_state_dict
from r3p.models.decoder import OSGDecoder


def _np_decoder(sd, feat, lr_mul=1.0):
  """The official forward in float64 numpy from torch-layout weights (W [out,in])."""
  def fc(x, w, b):
    return x @ (w * (lr_mul / np.sqrt(w.shape[1]))).T + b * lr_mul
  h = fc(feat, sd["net.0.weight"], sd["net.0.bias"])
  h = np.where(h > 20, h, np.log1p(np.exp(np.minimum(h, 20))))
  y = fc(h, sd["net.2.weight"], sd["net.2.bias"])
  return y[..., :1], 1 / (1 + np.exp(-y[..., 1:])) * 1.002 - 0.001


def _random_sd(seed=0):
  rng = np.random.default_rng(seed)
  return {"net.0.weight": rng.normal(size=(64, 32)), "net.0.bias": rng.normal(size=64) * 0.1,
          "net.2.weight": rng.normal(size=(33, 64)), "net.2.bias": rng.normal(size=33) * 0.1}


@pytest.mark.parametrize("lr_mul", [1.0, 0.5])
def test_matches_official_formula(lr_mul):
  sd = {k: v.astype(np.float32) for k, v in _random_sd().items()}
  dec = OSGDecoder(lr_mul=lr_mul, rngs=nnx.Rngs(0))
  load_state_dict(dec, sd)
  feat = np.random.default_rng(1).normal(size=(3, 7, 32)).astype(np.float32) * 3
  sigma, rgb = jax.jit(lambda f: dec(f))(jnp.asarray(feat))
  want_s, want_rgb = _np_decoder({k: v.astype(np.float64) for k, v in sd.items()}, feat.astype(np.float64), lr_mul)
  assert sigma.shape == (3, 7, 1) and rgb.shape == (3, 7, 32)
  np.testing.assert_allclose(sigma, want_s, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(rgb, want_rgb, rtol=0, atol=1e-6)
  assert float(rgb.min()) >= -0.001 and float(rgb.max()) <= 1.001


def test_loads_fixture_keys_and_round_trips():
  case = shared_path("fixtures", "r3p_model", "b1_frontal")
  from r3p.convert.seeded import load_seeded_state_dict
  sd = {k: v for k, v in load_seeded_state_dict(str(case)).items() if k.startswith("decoder.")}
  assert sorted(sd) == ["decoder.net.0.bias", "decoder.net.0.weight", "decoder.net.2.bias", "decoder.net.2.weight"]
  dec = OSGDecoder(rngs=nnx.Rngs(0))
  loaded = load_state_dict(dec, sd, prefix="decoder.")
  assert sorted(loaded) == sorted(sd)
  back = export_state_dict(dec, prefix="decoder.")
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k])
  assert sum(v.size for v in sd.values()) == 4257   # MODEL.md §1.3


def test_param_layout_and_errors():
  dec = OSGDecoder(rngs=nnx.Rngs(0))
  assert dec.net[0].weight[...].shape == (32, 64)   # JAX [in, out]
  assert dec.mlp_params()["w1"].shape == (64, 33)
  with pytest.raises(StateDictError, match="net.2.weight"):
    load_state_dict(dec, {"net.0.weight": np.zeros((64, 32)), "net.0.bias": np.zeros(64),
                          "net.2.bias": np.zeros(33)})
  with pytest.raises(ValueError, match="32 input features"):
    dec(jnp.zeros((4, 16)))
  assert nnx.find_duplicates(dec) == []


def test_bf16_compute_close_to_fp32():
  sd = {k: v.astype(np.float32) for k, v in _random_sd(2).items()}
  d32, d16 = OSGDecoder(rngs=nnx.Rngs(0)), OSGDecoder(dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  load_state_dict(d32, sd)
  load_state_dict(d16, sd)
  feat = jax.random.normal(jax.random.key(0), (64, 32))
  s32, c32 = d32(feat)
  s16, c16 = d16(feat)
  assert s16.dtype == jnp.float32
  assert float(jnp.abs(c16 - c32).max()) < 2e-2
  assert float(jnp.abs(s16 - s32).max()) < 0.05 * float(jnp.abs(s32).max())
