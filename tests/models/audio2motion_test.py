"""r3p.models.audio2motion: flow invertibility, shapes/masking, losses, KL annealing, converter, parity."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from r3p.audio import features as F
from r3p.convert.torch_to_nnx import export_state_dict
from r3p.models import audio2motion as A


@pytest.fixture(scope="module")
def model():
  m = A.PitchContourVAEModel(rngs=nnx.Rngs(0))
  # make the flow non-trivial (the official init zeroes `post`)
  for f in m.vae.prior_flow.flows:
    if hasattr(f, "post"):
      f.post.weight[...] = 0.05 * jax.random.normal(jax.random.key(3), f.post.weight[...].shape)
  return m


def _inputs(b=1, ta=64, seed=0):
  r = np.random.default_rng(seed)
  return (r.standard_normal((b, ta, 1024)).astype(np.float32), np.abs(r.normal(150, 60, (b, ta))).astype(np.float32),
          np.ones((b, ta // 2), np.float32))


def test_flow_is_invertible(model):
  g = jax.random.normal(jax.random.key(1), (2, 8, 128))
  z = jax.random.normal(jax.random.key(2), (2, 8, 16))
  fwd = model.vae.prior_flow(z, 1.0, g)
  assert np.abs(np.asarray(fwd - z)).max() > 1e-3
  back = model.vae.prior_flow(fwd, 1.0, g, reverse=True)
  np.testing.assert_allclose(np.asarray(back), np.asarray(z), atol=1e-5)


def test_infer_shapes_temperature_and_noise(model):
  h, f0, ym = _inputs()
  ym[:, 20:] = 0
  noise = jax.random.normal(jax.random.key(0), (1, 8, 16))
  a = model.infer(h, f0, ym, mouth_amp=np.array([[0.45]], np.float32), temperature=0.2, noise=noise)
  assert a.shape == (1, 32, 64) and np.all(np.asarray(a)[:, 20:] == 0)
  b = model.infer(h, f0, ym, mouth_amp=np.array([[0.45]], np.float32), temperature=0.2, noise=noise)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c = model.infer(h, f0, ym, mouth_amp=np.array([[0.45]], np.float32), temperature=0.0, noise=noise)
  assert np.abs(np.asarray(a - c)).max() > 0  # temperature scales the prior draw
  d = model.infer(h, f0, ym, mouth_amp=np.array([[0.9]], np.float32), temperature=0.2, noise=noise)
  assert np.abs(np.asarray(a - d)).max() > 0  # mouth_amp conditions the output
  e = model.infer(h[:, ::2], f0, ym, mouth_amp=np.array([[0.45]], np.float32), temperature=0.2, noise=noise,
                  hubert_25fps=True)  # pre-downsampled HuBERT (the long-clip path) is the same computation
  np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def test_f0_coarse_matches_numpy_torch_rule():
  f0 = np.concatenate([[0, 40, 50, 80, 1100, 3000], np.linspace(60, 900, 200)]).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(A.f0_to_coarse(jnp.asarray(f0))), F.f0_to_coarse(f0, torch_rounding=True))


def test_losses_and_annealing():
  pred = jnp.asarray(np.random.default_rng(0).standard_normal((2, 10, 4)), jnp.float32)
  y = jnp.zeros_like(pred)
  mask = jnp.asarray(np.array([[1] * 10, [1] * 6 + [0] * 4], np.float32))
  frames = 16.0
  m = np.asarray(mask)[..., None]
  np.testing.assert_allclose(float(A.mse_loss(pred, y, mask)), float((np.asarray(pred) ** 2 * m).sum() / (frames * 4)),
                             rtol=1e-6)
  p = np.pad(np.asarray(pred), ((0, 0), (1, 1), (0, 0)))
  lap = p[:, 1:-1] - 0.5 * p[:, :-2] - 0.5 * p[:, 2:]
  np.testing.assert_allclose(float(A.lap_loss(pred, mask)), float((lap ** 2 * m).sum() / (frames * 4)), rtol=1e-5)
  assert float(A.kl_annealing(0)) == 0.0 and abs(float(A.kl_annealing(1000)) - 0.01) < 1e-9
  assert abs(float(A.kl_annealing(2500)) - 0.02) < 1e-9 and abs(float(A.kl_annealing(5000)) - 0.01) < 1e-9
  w = A.lm468_weights()
  assert w.shape == (468,) and w[93] == 0 and w[159] == 20 and w[13] == 5 and w[33] == 3 and w[1] == 1


def test_train_forward_grads_and_bn_update(model):
  h, f0, ym = _inputs(b=2, ta=32, seed=1)
  ym[1, 10:] = 0
  y = np.random.default_rng(2).normal(0, 0.4, (2, 16, 64)).astype(np.float32) * ym[..., None]
  m = nnx.clone(model)
  before = np.asarray(m.mel_encoder[1].running_mean[...])

  def loss_fn(m):
    out = m.train_forward(h, f0, y, ym, noise=jnp.zeros((2, 4, 16)))
    total, losses = A.a2m_losses(out, y, ym, step=3000)
    return total, losses

  (total, losses), grads = nnx.value_and_grad(loss_fn, has_aux=True)(m)
  assert np.isfinite(float(total)) and set(losses) == {"kl", "mse_exp", "lap_exp", "l2_reg_exp"}
  gn = sum(float(jnp.sum(jnp.square(x))) for x in jax.tree.leaves(grads))
  assert gn > 0
  assert np.abs(np.asarray(m.mel_encoder[1].running_mean[...]) - before).max() > 0


def test_converter_roundtrip_with_weight_norm(model):
  sd = export_state_dict(model)
  k = "vae.decoder.wn.in_layers.0.weight"
  w = sd.pop(k)
  sd[k[:-len("weight")] + "weight_g"] = np.sqrt((w ** 2).sum(axis=(1, 2), keepdims=True))
  sd[k[:-len("weight")] + "weight_v"] = w
  sd = {"model." + kk: v for kk, v in sd.items()}
  m2 = A.PitchContourVAEModel(rngs=nnx.Rngs(5))
  A.load_a2m_state_dict(m2, sd)
  np.testing.assert_allclose(export_state_dict(m2)[k], w, rtol=1e-5, atol=1e-7)
