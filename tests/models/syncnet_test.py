"""r3p.models.syncnet: tower lengths, embedding properties, BCE, A2M sync loss masking, parity."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from r3p.models import syncnet as S


@pytest.fixture(scope="module")
def net():
  return S.LandmarkHubertSyncNet(lm_dim=60, audio_dim=64, base_hid_size=16, out_dim=32, rngs=nnx.Rngs(0))


def test_embeddings_normalised_nonnegative(net):
  r = np.random.default_rng(0)
  a, m = net(r.standard_normal((3, 10, 64)).astype(np.float32), r.standard_normal((3, 5, 60)).astype(np.float32))
  assert a.shape == m.shape == (3, 32)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(a), axis=-1), 1, atol=1e-5)
  assert np.all(np.asarray(a) >= 0) and np.all(np.asarray(m) >= 0)
  loss, cos = net.sync_loss(a, m, 1.0)
  assert np.all((np.asarray(cos) >= 0) & (np.asarray(cos) <= 1 + 1e-6))
  np.testing.assert_allclose(np.asarray(loss), -np.log(np.asarray(cos)), rtol=1e-5)


def test_bce_clamps_like_torch():
  np.testing.assert_allclose(np.asarray(S.bce(jnp.array([0.0, 1.0]), jnp.array([1.0, 0.0]))), [100.0, 100.0])


def test_a2m_sync_loss_masks_padding(net):
  r = np.random.default_rng(1)
  hub = r.standard_normal((2, 40, 64)).astype(np.float32)
  lm = r.standard_normal((2, 20, 60)).astype(np.float32)
  mask = np.ones((2, 20), np.float32)
  mask[1, 12:] = 0
  full = S.a2m_sync_loss(net, hub, lm, mask, np.array([0, 3]), train=False)
  # clip starting at 14 touches padding in sequence 1 only: it must not change the masked mean of the others
  with_pad = S.a2m_sync_loss(net, hub, lm, mask, np.array([0, 3, 14]), train=False)
  only_valid = S.a2m_sync_loss(net, hub[:1], lm[:1], mask[:1], np.array([14]), train=False)
  expect = (float(full) * 4 + float(only_valid)) / 5
  np.testing.assert_allclose(float(with_pad), expect, rtol=1e-5)
