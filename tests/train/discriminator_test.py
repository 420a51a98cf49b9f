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
