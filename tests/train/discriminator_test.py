"""DualDiscriminator: official state-dict names, shapes, a working R1 penalty (random weights, no parity)."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p import losses
from r3p.convert.torch_to_nnx import export_state_dict
from r3p.models.discriminator import DualDiscriminator


def test_names_shapes_and_r1():
  d = DualDiscriminator(16, channel_base=128, channel_max=16, mapping_layers=1, rngs=nnx.Rngs(0))
  sd = export_state_dict(d)
  for k in ("b16.fromrgb.weight", "b16.conv0.bias", "b16.conv1.weight", "b16.skip.weight", "b8.conv1.weight",
            "b4.conv.weight", "b4.fc.weight", "b4.out.bias", "mapping.embed.weight", "mapping.fc0.weight"):
    assert k in sd, k
  assert "b16.skip.bias" not in sd and "b8.fromrgb.weight" not in sd
  assert np.asarray(sd["b16.conv0.weight"]).shape == (8, 8, 3, 3)  # torch [out, in, k, k]
  img = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
  raw = jax.random.uniform(jax.random.key(2), (2, 8, 8, 3), minval=-1, maxval=1)
  c = jax.random.normal(jax.random.key(3), (2, 25))
  graphdef, state = nnx.split(d)

  @jax.jit
  def run(state, img, raw, c):
    m = nnx.merge(graphdef, state)
    logits = m(img, raw, c)
    r1 = losses.r1_penalty(lambda a, b: m(a, b, c), img, raw)
    def d_loss(st):
      mm = nnx.merge(graphdef, st)
      return losses.adv_d_loss(mm(img, raw, c), mm(-img, -raw, c))[0]
    return logits, r1, jax.grad(d_loss)(state)

  logits, r1, g = run(state, img, raw, c)
  assert logits.shape == (2, 1) and bool(jnp.all(jnp.isfinite(logits)))
  assert float(r1) > 0
  assert float(jnp.abs(g["b4"]["out"]["weight"][...]).sum()) > 0


def test_camera_noise_std_clamp_and_sizes():
  from r3p.models.discriminator import C_STD_B1, DualDiscriminator, camera_noise_std, clamp_unit
  c = jax.random.normal(jax.random.key(0), (3, 25))
  np.testing.assert_allclose(np.asarray(camera_noise_std(c)), np.std(np.asarray(c), axis=0, ddof=1), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(camera_noise_std(c[:1])), C_STD_B1)   # released B=1 table
  # torch.clamp's gradient: 1 on the closed interval [-1, 1], 0 outside.
  x = jnp.asarray([-1.5, -1.0, 0.3, 1.0, 1.5])
  np.testing.assert_array_equal(np.asarray(jax.grad(lambda v: jnp.sum(clamp_unit(v)))(x)), [0, 1, 1, 1, 0])
  np.testing.assert_allclose(np.asarray(clamp_unit(x)), [-1, -1, 0.3, 1, 1], rtol=1e-7)
  full = nnx.eval_shape(lambda: DualDiscriminator.of_size("full", 512, rngs=nnx.Rngs(0)))
  assert full.b512.fromrgb.weight.shape == (1, 1, 6, 64) and full.b8.conv1.weight.shape == (3, 3, 512, 512)
  assert full.mapping.num_layers == 8 and full.b4.out.weight.shape == (512, 512)
  tiny = nnx.eval_shape(lambda: DualDiscriminator.of_size("tiny", 32, rngs=nnx.Rngs(0)))
  assert tiny.b32.fromrgb.weight.shape == (1, 1, 6, 8) and tiny.mapping.num_layers == 2
  # Inputs outside [-1, 1] are clamped (the release clamps the 6-channel D input).
  d = DualDiscriminator.of_size("tiny", 8, rngs=nnx.Rngs(0))
  img = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3), minval=-1, maxval=1)
  cam = jax.random.normal(jax.random.key(2), (2, 25))
  np.testing.assert_allclose(np.asarray(d(img * 3, img * 3, cam)), np.asarray(d(jnp.clip(img * 3, -1, 1),
                                                                                 jnp.clip(img * 3, -1, 1), cam)),
                             rtol=1e-6)
