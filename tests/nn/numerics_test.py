"""Batch-invariant reductions (r3p.nn.numerics): values, gradients, and bit-identity across batch sizes.

The reason they exist: XLA:CPU rounds `x.sum(-1)` differently for a [1, 64, 32] and an [8, 64, 32] operand (checked
below, so the test notices if a future XLA stops doing that), which made the 8-device sharded forward (one item per
device) differ from the 1-device forward. Every item must get the same bits at any batch size.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r3p.nn import numerics
from r3p.nn.layers import GroupNorm, LayerNorm

SHAPES = [(64, 32), (16, 160), (64, 33), (7, 5)]


def _per_item(f, x):
  jf = jax.jit(f)
  return np.asarray(jf(x)), np.concatenate([np.asarray(jf(x[i:i + 1])) for i in range(x.shape[0])])


@pytest.mark.parametrize("shape", SHAPES)
def test_tree_sum_value(shape):
  x = np.random.default_rng(0).normal(size=(3,) + shape).astype(np.float32) * 3 + 1
  ref = x.astype(np.float64)
  np.testing.assert_allclose(numerics.tree_sum(jnp.asarray(x)), ref.sum(-1), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(numerics.tree_sum(jnp.asarray(x), (0, 2), keepdims=True),
                             ref.sum((0, 2), keepdims=True), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(numerics.tree_mean(jnp.asarray(x), (1, 2)), ref.mean((1, 2)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(numerics.softmax(jnp.asarray(x)), jax.nn.softmax(jnp.asarray(x)), atol=1e-6)
  assert numerics.tree_sum(jnp.asarray(x), ()).shape == x.shape  # empty axes: identity


def test_tree_sum_gradient():
  x = jax.random.normal(jax.random.key(0), (4, 37))
  g = jax.grad(lambda v: jnp.sum(numerics.tree_sum(v * v)))(x)
  np.testing.assert_allclose(g, 2 * x, rtol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_invariant(shape):
  x = jax.random.normal(jax.random.key(1), (8,) + shape) * 3 + 1
  for f in (lambda v: numerics.tree_sum(v, -1), lambda v: numerics.softmax(v, -1),
            LayerNorm(shape[-1]), lambda v: numerics.tree_mean(v, (1, 2))):
    a, b = _per_item(f, x)
    np.testing.assert_array_equal(a, b)
  gn = GroupNorm(2, 32)
  a, b = _per_item(gn, jax.random.normal(jax.random.key(2), (8, 9, 11, 32)))
  np.testing.assert_array_equal(a, b)


def test_plain_xla_sum_is_not_batch_invariant():
  """The premise: if this starts failing, XLA:CPU became batch-invariant by itself (numerics still correct)."""
  if jax.devices()[0].platform != "cpu":
    pytest.skip("premise measured on XLA:CPU")
  x = jax.random.normal(jax.random.key(1), (8, 64, 32)) * 3 + 1
  a, b = _per_item(lambda v: v.sum(-1), x)
  assert np.abs(a - b).max() > 0
