import jax
import jax.numpy as jnp
import numpy as np

from r3p import losses


def test_masked_l1_clamps_outliers_with_zero_gradient():
  pred = jnp.zeros((1, 10, 10, 3))
  tgt = jnp.zeros((1, 10, 10, 3)).at[0, 0, 0].set(5.0)  # one outlier pixel (error 15 > clamp)
  mask = jnp.ones((1, 10, 10, 1))
  g = jax.grad(lambda p: losses.masked_l1(p, tgt, mask))(pred)
  assert float(jnp.abs(g[0, 0, 0]).sum()) == 0.0
  assert np.isclose(float(losses.masked_l1(pred, tgt, mask)), 0.5 / 100)  # clamped to max(0.5, p80=0)


def test_masked_l1_unmasked_weight():
  pred = jnp.full((1, 4, 4, 3), 0.1)
  tgt = jnp.zeros((1, 4, 4, 3))
  m0 = losses.masked_l1(pred, tgt, jnp.zeros((1, 4, 4, 1)), unmasked_weight=0.2)
  m1 = losses.masked_l1(pred, tgt, jnp.ones((1, 4, 4, 1)), unmasked_weight=0.2)
  np.testing.assert_allclose([float(m0), float(m1)], [0.06, 0.3], rtol=1e-5)


def test_opacity_regularisers():
  w = jnp.full((1, 2, 2, 1), 0.5)
  np.testing.assert_allclose(float(losses.opacity_entropy(w)), 1.0, rtol=1e-5)
  head = jnp.array([1.0, 0, 0, 0]).reshape(1, 2, 2, 1)
  np.testing.assert_allclose(float(losses.opacity_l1(w, head)), 0.5, rtol=1e-4)


def test_adversarial_and_r1():
  r, f = losses.adv_d_loss(jnp.array([0.0]), jnp.array([0.0]))
  np.testing.assert_allclose([float(r), float(f)], [np.log(2)] * 2, rtol=1e-6)
  np.testing.assert_allclose(float(losses.adv_g_loss(jnp.array([0.0]))), np.log(2), rtol=1e-6)
  x = jnp.ones((2, 3))
  # D(x) = 2·sum(x): gradient 2 everywhere, ‖∇‖² = 4·3 = 12 per sample, /2 = 6.
  np.testing.assert_allclose(float(losses.r1_penalty(lambda a: 2 * a.sum(-1), x)), 6.0, rtol=1e-6)


def test_density_reg_zero_for_constant_field_and_lambda_update():
  v = losses.density_reg_l1(lambda p: jnp.ones(p.shape[:-1] + (1,)), jax.random.key(0), 2, n_points=10)
  assert float(v) == 0.0
  lam = losses.update_lambda(jnp.float32(1e-3), jnp.float32(3.0), 0.3, lr=0.01, max_value=2.0)
  np.testing.assert_allclose(float(lam), 1e-3 + 0.01, rtol=1e-5)
  assert float(losses.update_lambda(jnp.float32(0.5), jnp.float32(1.0), 0.0)) == 0.0
  assert float(losses.update_lambda(jnp.float32(0.19), jnp.float32(1e9), 0.5, max_value=0.2)) == np.float32(0.2)
