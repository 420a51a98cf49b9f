"""Dilated ResNet-34 / DeepLabV3 building blocks: structure (dilation patch, torch names) and small-op semantics.
Numerical parity of the whole encoder against the official network is in tests/models/img2plane_test.py."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r3p.nn import resnet


def test_max_pool_matches_torch_padding():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 7, 6, 2)).astype(np.float32) - 5.0  # all negative: zero padding would win
  y = np.asarray(resnet.max_pool_3x3_s2(jnp.asarray(x)))
  assert y.shape == (1, 4, 3, 2)  # torch: floor((n + 2 - 3) / 2) + 1
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  for i in range(4):
    for j in range(3):
      np.testing.assert_array_equal(y[0, i, j], xp[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1)))


def test_dilation_patch_every_conv_of_layer3_and_layer4():
  enc = nnx.eval_shape(lambda: resnet.ResNetEncoder(5, (3, 4, 6, 3), output_stride=8, rngs=nnx.Rngs(0)))
  for name, d in (("layer3", 2), ("layer4", 4)):
    for blk in getattr(enc, name):
      for conv in (blk.conv1, blk.conv2):
        assert conv.stride == (1, 1) and conv.dilation == (d, d) and conv.padding == ((d, d), (d, d))
    ds = getattr(enc, name)[0].downsample[0]
    assert ds.stride == (1, 1) and ds.dilation == (d, d) and ds.padding == ((0, 0), (0, 0))
  assert enc.layer2[0].conv1.stride == (2, 2) and enc.layer2[0].downsample[0].stride == (2, 2)
  assert enc.layer1[0].downsample is None


def test_encoder_feature_shapes_and_names():
  model = nnx.eval_shape(lambda: resnet.DeepLabV3(5, 256, rngs=nnx.Rngs(0)))
  x = jax.ShapeDtypeStruct((1, 64, 64, 5), jnp.float32)
  feats = nnx.eval_shape(lambda m, x: m.encoder(x), model, x)
  assert [f.shape for f in feats] == [(1, 64, 64, 5), (1, 32, 32, 64), (1, 16, 16, 64), (1, 8, 8, 128),
                                      (1, 8, 8, 256), (1, 8, 8, 512)]
  assert nnx.eval_shape(lambda m, x: m(x), model, x).shape == (1, 8, 8, 256)
  keys = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat)))}
  for k in ("encoder.layer3.0.downsample.1.running_var", "encoder.layer4.2.bn2.num_batches_tracked",
            "decoder.0.convs.4.1.weight", "decoder.0.project.0.weight", "decoder.1.weight"):
    assert k in keys, k
  assert not any(k.endswith(".bias") for k in keys if k.startswith("decoder"))  # bias-free decoder
  with pytest.raises(ValueError, match="divisible by 8"):
    nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((1, 60, 64, 5), jnp.float32))


def test_aspp_pooling_branch_is_a_broadcast():
  aspp = resnet.ASPP(6, 4, (1, 2, 3), rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 5, 5, 6))
  pooled = resnet.run_sequential(aspp.convs[4], x)  # [2, 1, 1, 4]
  manual = jax.nn.relu(jnp.einsum("bc,co->bo", x.mean((1, 2)), aspp.convs[4][1].weight[0, 0]))
  np.testing.assert_allclose(np.asarray(pooled[:, 0, 0]), np.asarray(manual), atol=1e-6)
  y = aspp(x)
  assert y.shape == (2, 5, 5, 4) and bool((y >= 0).all())  # project ends in ReLU
