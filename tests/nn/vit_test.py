"""SegFormer blocks and pixel ops of r3p.nn.vit against small numpy references of the torch semantics."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.nn import vit


def test_pixel_shuffle_matches_torch_index_rule():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 5, 8)).astype(np.float32)  # NHWC, 8 = 2 out channels x 2 x 2
  y = np.asarray(vit.pixel_shuffle(jnp.asarray(x), 2))
  assert y.shape == (2, 6, 10, 2)
  for c in range(2):
    for i in range(2):
      for j in range(2):
        # torch: out[b, c, h·r + i, w·r + j] = in[b, c·r² + i·r + j, h, w]
        np.testing.assert_array_equal(y[:, i::2, j::2, c], x[..., c * 4 + i * 2 + j])


def _np_attention(q, k, v, heads, scale):
  b, n, c = q.shape
  d = c // heads
  qh = q.reshape(b, n, heads, d).transpose(0, 2, 1, 3).astype(np.float64)
  kh = k.reshape(b, -1, heads, d).transpose(0, 2, 1, 3).astype(np.float64)
  vh = v.reshape(b, -1, heads, d).transpose(0, 2, 1, 3).astype(np.float64)
  a = qh @ kh.transpose(0, 1, 3, 2) * scale
  a = np.exp(a - a.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  return (a @ vh).transpose(0, 2, 1, 3).reshape(b, n, c)


def test_attention_matches_reference_and_chunking_is_exact():
  rng = np.random.default_rng(1)
  q = rng.standard_normal((2, 64, 16)).astype(np.float32)
  k = rng.standard_normal((2, 16, 16)).astype(np.float32)
  v = rng.standard_normal((2, 16, 16)).astype(np.float32)
  ref = _np_attention(q, k, v, 4, 0.5)
  full = np.asarray(vit.multi_head_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), 4, 0.5))
  np.testing.assert_allclose(full, ref, rtol=0, atol=2e-6)
  chunked = np.asarray(vit.multi_head_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), 4, 0.5,
                                                max_logits_elements=2 * 4 * 8 * 16))  # forces 8 query chunks
  np.testing.assert_allclose(chunked, full, rtol=0, atol=1e-6)


def test_attention_bf16_keeps_fp32_softmax():
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 32, 16)) * 3, jnp.bfloat16) for _ in range(3))
  ref = _np_attention(*(np.asarray(a, np.float64) for a in (q, k, v)), 2, 0.25)  # from the rounded inputs
  out = vit.multi_head_attention(q, k, v, 2, 0.25)
  assert out.dtype == jnp.bfloat16
  # Only the bf16 probabilities and the bf16 output rounding remain (|out| <~ 8: bf16 ulp 0.03 at most).
  assert np.abs(np.asarray(out, np.float32) - ref).max() < 0.05


def test_dwconv_equals_grouped_conv():
  rngs = nnx.Rngs(0)
  m = vit.DWConv(8, rngs=rngs)
  x = jax.random.normal(jax.random.key(3), (2, 5 * 7, 8))
  got = m(x, 5, 7)
  want = m.dwconv(x.reshape(2, 5, 7, 8)).reshape(2, 35, 8)  # lax grouped convolution, torch groups=C
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)


def test_upsample_align_corners():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((1, 4, 3, 2)).astype(np.float32)
  y = np.asarray(vit.upsample_bilinear_align_corners(jnp.asarray(x), 2))
  assert y.shape == (1, 8, 6, 2)

  def axis_weights(n_in, n_out):  # torch align_corners=True: src = dst·(in−1)/(out−1)
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
      s = o * (n_in - 1) / (n_out - 1)
      i0 = min(int(np.floor(s)), n_in - 1)
      i1 = min(i0 + 1, n_in - 1)
      w[o, i0] += 1 - (s - i0)
      w[o, i1] += s - i0
    return w

  ref = np.einsum("oh,pw,bhwc->bopc", axis_weights(4, 8), axis_weights(3, 6), x.astype(np.float64))
  np.testing.assert_allclose(y, ref, atol=2e-6)
  np.testing.assert_array_equal(y[0, [0, -1]][:, [0, -1]], x[0, [0, -1]][:, [0, -1]])  # corners kept exactly


def test_block_paths_and_sr_shapes():
  blk = vit.Block(16, 4, mlp_ratio=2, sr_ratio=2, rngs=nnx.Rngs(0))
  keys = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(blk, nnx.Param))}
  assert {"attn.q.weight", "attn.kv.weight", "attn.proj.bias", "attn.sr.weight", "attn.norm.weight",
          "mlp.fc1.weight", "mlp.dwconv.dwconv.weight", "mlp.fc2.bias", "norm1.weight", "norm2.bias"} <= keys
  assert blk.attn.sr.weight[...].shape == (2, 2, 16, 16)
  x = jax.random.normal(jax.random.key(5), (2, 8 * 8, 16))
  y = blk(x, 8, 8)
  assert y.shape == x.shape and bool(jnp.isfinite(y).all())
  blk16 = vit.Block(16, 4, mlp_ratio=2, sr_ratio=2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert blk16(x, 8, 8).dtype == jnp.bfloat16
