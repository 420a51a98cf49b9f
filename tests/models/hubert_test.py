"""r3p.models.hubert: converter, masked fixed-shape chunks == unpadded forward, official chunk plan, parity."""
import numpy as np
import pytest
import jax.numpy as jnp
from flax import nnx

from r3p.convert.torch_to_nnx import export_state_dict
from r3p.models import hubert as H

TINY = H.HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


@pytest.fixture(scope="module")
def tiny():
  return H.HubertModel(TINY, rngs=nnx.Rngs(1))


def test_chunk_plan_official():
  assert H.chunk_plan(656000) == [(0, 320080), (320000, 640080), (640000, 656000)]
  assert H.chunk_plan(32000) == [(0, 32000)]
  assert H.chunk_plan(320399) == [(0, 320080)]          # remainder 399 < 400 samples: skipped
  assert H.chunk_plan(320400) == [(0, 320080), (320000, 320400)]
  for n in (32000, 320399, 320400, 656000, 9_600_000):
    total = sum(H.num_frames(e - s) for s, e in H.chunk_plan(n))
    assert total >= (n - 80) // 320 and H.num_frames(H.CHUNK_SAMPLES) == 1000


def test_padded_masked_chunk_equals_unpadded(tiny):
  """The fixed-shape chunk function (zero-padded, masked) reproduces the forward on the exact length."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal(5000).astype(np.float32)
  ref = np.asarray(tiny(jnp.asarray(x[None])))[0]
  runner = H.HubertChunkRunner(tiny, chunk_samples=12000)
  got = runner(x)
  assert got.shape == ref.shape == (H.num_frames(5000, TINY), 32)
  np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-5)
  # the padding really is masked: without the mask the result changes
  buf = np.zeros((1, 12000), np.float32)
  buf[0, :5000] = x
  unmasked = np.asarray(tiny(jnp.asarray(buf)))[0, :ref.shape[0]]
  assert np.abs(unmasked - ref).max() > 1e-3


def test_extract_hubert_length_and_compile_once(tiny, monkeypatch):
  monkeypatch.setattr(H, "CHUNK_STRIDE", 3200)      # 10 frames per chunk, so the tiny test spans chunks
  monkeypatch.setattr(H, "CHUNK_SAMPLES", 3200 - 320 + 400)
  runner = H.HubertChunkRunner(tiny, chunk_samples=H.CHUNK_SAMPLES)
  x = np.random.default_rng(1).standard_normal(3200 * 3 + 1000).astype(np.float32)
  out = H.extract_hubert(runner, x)
  assert out.shape == ((x.shape[0] - 80) // 320, 32)
  if hasattr(runner._run, "_cache_size"):  # every chunk (incl. the short last one) used the one compiled shape
    assert runner._run._cache_size() == 1
  # chunk 1 equals the model on its own slice
  s, e = H.chunk_plan(x.shape[0])[1]
  np.testing.assert_allclose(out[10:20], np.asarray(tiny(jnp.asarray(x[None, s:e])))[0], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("style", ["old", "parametrizations"])
def test_converter_weight_norm_and_ctc_prefix(tiny, style):
  sd = export_state_dict(tiny)
  w = sd.pop("encoder.pos_conv_embed.conv.weight")            # [out, in/groups, k]
  g = np.sqrt((w.astype(np.float64) ** 2).sum(axis=(0, 1), keepdims=True)).astype(np.float32) * 2.0
  v = w * 1.0
  if style == "old":
    sd["encoder.pos_conv_embed.conv.weight_g"], sd["encoder.pos_conv_embed.conv.weight_v"] = g, v
  else:
    sd["encoder.pos_conv_embed.conv.parametrizations.weight.original0"] = g
    sd["encoder.pos_conv_embed.conv.parametrizations.weight.original1"] = v
  ctc = {"hubert." + k: a for k, a in sd.items()}
  ctc["hubert.masked_spec_embed"] = np.zeros(32, np.float32)
  ctc["lm_head.weight"], ctc["lm_head.bias"] = np.zeros((32, 32), np.float32), np.zeros(32, np.float32)
  model = H.hubert_from_state_dict(ctc, TINY)
  got = export_state_dict(model)["encoder.pos_conv_embed.conv.weight"]
  np.testing.assert_allclose(got, 2.0 * w, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="missing"):
    H.hubert_from_state_dict({k: a for k, a in ctc.items() if "layers.1.attention" not in k}, TINY)
