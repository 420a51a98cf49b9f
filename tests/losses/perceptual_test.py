"""Perceptual (VGG19 + VGGFace) and lip-crop losses. RANDOM weights (He-normal, channels ÷8): these tests check
structure, names, freezing and gradients, not the released loss values (no pretrained VGG is shipped)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r3p.losses import lip, perceptual


@pytest.fixture(scope="module")
def nets():
  return perceptual.PerceptualNets(width_div=8, rngs=nnx.Rngs(0))


def test_frozen_weights_are_not_params_and_keep_torch_names(nets):
  assert len(nnx.state(nets, nnx.Param)) == 0
  frozen = nnx.to_flat_state(nnx.state(nets, perceptual.FrozenWeight))
  names = {".".join(str(k) for k in p) for p, _ in frozen}
  assert "vgg19.features.28.weight" in names and "vgg19.features.30.weight" not in names  # up to relu5_1
  assert "vggface.features.24.bias" in names and "vggface.features.26.weight" not in names
  assert nets.vgg19.features[28].weight.shape == (3, 3, 64, 64)  # HWIO, 512/8


def test_loss_zero_on_equal_positive_otherwise_and_grad_flows(nets):
  a = jax.random.uniform(jax.random.key(0), (2, 24, 24, 3), minval=-1, maxval=1)
  b = jax.random.uniform(jax.random.key(1), (2, 24, 24, 3), minval=-1, maxval=1)
  f = jax.jit(lambda x, y: perceptual.perceptual_loss(nets, x, y, size=32))
  assert float(f(a, a)) == 0.0
  assert float(f(a, b)) > 0
  g_pred, g_tgt = jax.jit(jax.grad(lambda x, y: perceptual.perceptual_loss(nets, x, y, size=32), (0, 1)))(a, b)
  assert float(jnp.abs(g_pred).sum()) > 0 and float(jnp.abs(g_tgt).sum()) == 0.0  # target detached
  with pytest.raises(ValueError, match="differ"):
    perceptual.perceptual_loss(nets, a, b[:1])


def test_vggface_dag_names_map_to_vgg16_indices():
  sd = {f"{n}.{p}": np.full((1,), i, np.float32) for i, n in perceptual.VGGFACE_DAG.items() for p in ("weight", "bias")}
  out = perceptual.vggface_state_dict(sd)
  assert float(out["features.17.weight"][0]) == 17 and len(out) == 26
  with pytest.raises(ValueError, match="conv1_1.weight"):
    perceptual.vggface_state_dict({})


def test_lip_box_and_crop():
  lm = jnp.zeros((1, 68, 2)).at[0, 48:60].set(jnp.array([[10.0, 20.0], [20.0, 24.0]] * 6))
  box = lip.lip_boxes(lm, 64, 64)
  np.testing.assert_allclose(np.asarray(box[0]), [15 - 6, 15 + 6, 22 - 6, 22 + 6], atol=1e-5)  # 1.2*max(5,2)
  img = jnp.broadcast_to(jnp.arange(64.0)[None, None, :, None], (1, 64, 64, 1))  # value = column index
  c = lip.crop(img, box, 12)
  np.testing.assert_allclose(np.asarray(c[0, 0, :, 0]), np.arange(9, 21) + 0.0, atol=1e-4)  # pixel centres
  mae, _, _ = lip.lip_mae(img, img + 1.0, box, 12)
  np.testing.assert_allclose(float(mae), 1.0, rtol=1e-6)
  edge = lip.lip_boxes(jnp.zeros((1, 68, 2)).at[0, 48:60, 0].set(jnp.linspace(-5.0, 3.0, 12)), 64, 64)
  assert float(edge[0, 0]) == 0.0 and float(edge[0, 1]) > 1.0  # clipped to the image


def test_loads_torch_layout_state_dicts():
  from eval._nets import random_like_torch
  from eval.lpips import _VGG
  sd19 = random_like_torch(perceptual.VGGFeatures(perceptual._vgg_spec(perceptual.VGG19_CFG, 8),
                                                  perceptual.VGG19_TAPS, rngs=nnx.Rngs(1)), 1)
  sdf = random_like_torch(perceptual.VGGFeatures(perceptual._scale_spec(_VGG, 8), perceptual.VGGFACE_TAPS,
                                                 rngs=nnx.Rngs(2)), 2)
  sd19["classifier.0.weight"] = np.zeros((2, 2), np.float32)  # torchvision's classifier and the convs past
  sd19["features.34.weight"] = np.zeros((2, 2, 3, 3), np.float32)  # relu5_1 are ignored
  nets = perceptual.PerceptualNets(width_div=8, vgg19_sd=sd19, vggface_sd=sdf, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(nets.vgg19.features[28].weight[...]),
                                sd19["features.28.weight"].transpose(2, 3, 1, 0))  # OIHW -> HWIO
  np.testing.assert_array_equal(np.asarray(nets.vggface.features[0].weight[...]),
                                sdf["features.0.weight"].transpose(2, 3, 1, 0))
  assert len(nnx.state(nets, nnx.Param)) == 0
  with pytest.raises(ValueError, match="VGG19"):
    perceptual.PerceptualNets(width_div=4, vgg19_sd=sd19, vggface_sd=sdf, rngs=nnx.Rngs(0))  # wrong widths
