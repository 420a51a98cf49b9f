"""HuBERT-large (the `facebook/hubert-large-ls960-ft` architecture as a bare `HubertModel`) in Flax NNX.

Layout: waveform [B, N] (normalised, 16 kHz) -> hidden states [B, T, 1024], T = (N - 80) // 320 (50 Hz).
Module attribute paths mirror the transformers state_dict keys (`feature_extractor.conv_layers.0.conv.weight`,
`encoder.layers.3.attention.q_proj.weight`, ...), so `load_hubert_state_dict` needs no per-key code beyond
stripping the CTC wrapper (`hubert.` prefix, `lm_head.*`) and folding the positional conv's weight norm.

Architecture: 7 conv layers (512 ch, kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2, bias, LayerNorm over channels
after each conv, exact GELU); feature projection LayerNorm(512) -> Linear(512, 1024); positional conv
Conv1d(1024, 1024, k 128, pad 64, groups 16) with the last frame dropped, GELU, added; 24 pre-LN ("stable layer
norm") transformer layers (16 heads, FFN 4096, GELU); final LayerNorm. Eval mode only (no dropout / masking).

Long audio (`extract_hubert`) follows the official chunking exactly: chunks start every 320000 samples and
span 320080 samples (1000 frames each); the remainder is one more chunk if it has >= 400 samples; attention and
the positional conv see one chunk at a time. Every chunk runs through ONE jitted function of fixed shape
(`HubertChunkRunner`): the short last chunk is zero-padded and masked (its padded frames are zeroed before the
positional conv and excluded from attention as keys), which reproduces the unpadded forward. Memory does not grow
with the clip beyond the [T, 1024] result.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.convert.torch_to_nnx import fold_weight_norm, load_state_dict
from r3p.nn.conv1d import Conv1d
from r3p.nn.layers import LayerNorm, Linear

Array = jax.Array

CHUNK_FRAMES = 1000
HOP, KERNEL = 320, 400
CHUNK_STRIDE = HOP * CHUNK_FRAMES            # 320000 samples = 20 s
CHUNK_SAMPLES = CHUNK_STRIDE - HOP + KERNEL  # 320080 samples -> exactly 1000 frames


@dataclasses.dataclass(frozen=True)
class HubertConfig:
  hidden_size: int = 1024
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  intermediate_size: int = 4096
  conv_dim: tuple[int, ...] = (512,) * 7
  conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
  conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
  num_conv_pos_embeddings: int = 128
  num_conv_pos_embedding_groups: int = 16
  layer_norm_eps: float = 1e-5

  @classmethod
  def from_dict(cls, d: Mapping) -> "HubertConfig":
    """From a transformers config dict (other keys ignored). Only the large, stable-layer-norm variant exists."""
    if d.get("feat_extract_norm", "layer") != "layer" or not d.get("do_stable_layer_norm", True):
      raise ValueError("only the HuBERT-large layout (feat_extract_norm 'layer', do_stable_layer_norm) is supported")
    kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
    for k in ("conv_dim", "conv_kernel", "conv_stride"):
      if k in kw:
        kw[k] = tuple(kw[k])
    return cls(**kw)


def gelu(x):
  return jax.nn.gelu(x, approximate=False)


def num_frames(n: int, cfg: HubertConfig = HubertConfig()) -> int:
  for k, s in zip(cfg.conv_kernel, cfg.conv_stride):
    n = (n - k) // s + 1
  return max(n, 0)


class ConvLayer(nnx.Module):
  def __init__(self, cin, cout, k, s, eps, *, dtype, param_dtype, rngs):
    self.conv = Conv1d(cin, cout, k, stride=s, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.layer_norm = LayerNorm(cout, eps=eps, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x):
    return gelu(self.layer_norm(self.conv(x)))


class FeatureExtractor(nnx.Module):
  def __init__(self, cfg: HubertConfig, *, dtype, param_dtype, rngs):
    cins = (1,) + cfg.conv_dim[:-1]
    # HF's conv-layer LayerNorm uses torch's default eps (1e-5), not config.layer_norm_eps.
    self.conv_layers = nnx.List([ConvLayer(ci, co, k, s, 1e-5, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                 for ci, co, k, s in zip(cins, cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)])

  def __call__(self, wav):  # [B, N] -> [B, T, 512]
    x = wav[..., None]
    for layer in self.conv_layers:
      x = layer(x)
    return x


class FeatureProjection(nnx.Module):
  def __init__(self, cfg: HubertConfig, *, dtype, param_dtype, rngs):
    self.layer_norm = LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype)
    self.projection = Linear(cfg.conv_dim[-1], cfg.hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x):
    return self.projection(self.layer_norm(x))


class PositionalConvEmbedding(nnx.Module):
  def __init__(self, cfg: HubertConfig, *, dtype, param_dtype, rngs):
    k = cfg.num_conv_pos_embeddings
    self.conv = Conv1d(cfg.hidden_size, cfg.hidden_size, k, padding=k // 2, groups=cfg.num_conv_pos_embedding_groups,
                       dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.remove = 1 if k % 2 == 0 else 0  # even kernel: "same" padding leaves one extra frame at the end

  def __call__(self, x):
    y = self.conv(x)
    if self.remove:
      y = y[:, :-self.remove]
    return gelu(y)


class Attention(nnx.Module):
  def __init__(self, cfg: HubertConfig, *, dtype, param_dtype, rngs):
    d = cfg.hidden_size
    self.num_heads = cfg.num_attention_heads
    self.head_dim = d // self.num_heads
    self.dtype = dtype
    for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
      setattr(self, name, Linear(d, d, dtype=dtype, param_dtype=param_dtype, rngs=rngs))

  def __call__(self, x, key_mask=None):  # x [B, T, D]; key_mask [B, T] bool (True = attend)
    b, t, _ = x.shape
    split = lambda y: y.reshape(b, t, self.num_heads, self.head_dim)
    q = split(self.q_proj(x) * (self.head_dim ** -0.5))
    k, v = split(self.k_proj(x)), split(self.v_proj(x))
    prec = jax.lax.Precision.HIGHEST if jnp.dtype(self.dtype) == jnp.float32 else None
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=prec).astype(jnp.float32)
    if key_mask is not None:
      logits = jnp.where(key_mask[:, None, None, :], logits, -jnp.inf)
    w = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    o = jnp.einsum("bhqk,bkhd->bqhd", w, v, precision=prec).reshape(b, t, -1)
    return self.out_proj(o)


class FeedForward(nnx.Module):
  def __init__(self, cfg: HubertConfig, *, dtype, param_dtype, rngs):
    self.intermediate_dense = Linear(cfg.hidden_size, cfg.intermediate_size, dtype=dtype, param_dtype=param_dtype,
                                     rngs=rngs)
    self.output_dense = Linear(cfg.intermediate_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs)

  def __call__(self, x):
    return self.output_dense(gelu(self.intermediate_dense(x)))


class EncoderLayer(nnx.Module):
  """Pre-LN layer: x + attn(LN(x)), then + FFN(LN(.))."""

  def __init__(self, cfg: HubertConfig, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.attention = Attention(cfg, rngs=rngs, **kw)
    self.layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **kw)
    self.feed_forward = FeedForward(cfg, rngs=rngs, **kw)
    self.final_layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **kw)

  def __call__(self, x, key_mask=None):
    x = x + self.attention(self.layer_norm(x), key_mask)
    return x + self.feed_forward(self.final_layer_norm(x))


class Encoder(nnx.Module):
  def __init__(self, cfg: HubertConfig, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.pos_conv_embed = PositionalConvEmbedding(cfg, rngs=rngs, **kw)
    self.layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, **kw)
    self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs, **kw) for _ in range(cfg.num_hidden_layers)])

  def __call__(self, x, frame_mask=None, record=None):
    if frame_mask is not None:  # padded frames must not leak into the positional conv (HF zeroes them too)
      x = jnp.where(frame_mask[..., None], x, 0)
    pos = self.pos_conv_embed(x)
    x = x + pos
    if record is not None:
      record["pos_conv_embed"], record["layer_input"] = pos, x
    for i, layer in enumerate(self.layers):
      x = layer(x, frame_mask)
      if record is not None:
        record[f"layer_{i:02d}_output"] = x
    return self.layer_norm(x)


class HubertModel(nnx.Module):
  """Bare HuBERT (no CTC head). __call__(wav [B, N], frame_mask [B, T] | None) -> [B, T, hidden]."""

  def __init__(self, cfg: HubertConfig = HubertConfig(), *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.config = cfg
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.feature_extractor = FeatureExtractor(cfg, **kw)
    self.feature_projection = FeatureProjection(cfg, **kw)
    self.encoder = Encoder(cfg, **kw)

  def __call__(self, wav: Array, frame_mask: Array | None = None, record: dict | None = None) -> Array:
    feats = self.feature_extractor(wav)
    h = self.feature_projection(feats)
    if record is not None:
      record["conv_features"], record["feature_projection"] = feats, h
    return self.encoder(h, frame_mask, record)


# ------------------------------------------------------------------------------------------------ checkpoints

UNUSED_KEYS = ("masked_spec_embed",)


def convert_hubert_state_dict(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """transformers HubertModel / HubertForCTC state dict -> the keys of `HubertModel` here.

  Strips the CTC wrapper (`hubert.` prefix, `lm_head.*`), drops `masked_spec_embed` (training-time masking) and
  folds the positional conv's weight norm (old `weight_g/weight_v` or `parametrizations.weight.original0/1`,
  norm over every axis but the kernel axis, dim 2).
  """
  out = {}
  for k, v in sd.items():
    if k.startswith("lm_head.") or k.startswith("dropout"):
      continue
    if k.startswith("hubert."):
      k = k[len("hubert."):]
    if k in UNUSED_KEYS:
      continue
    out[k] = np.asarray(v)
  return fold_weight_norm(out, dim=2)


def load_hubert_state_dict(model: HubertModel, sd: Mapping[str, np.ndarray]) -> list[str]:
  """Load a transformers-named torch state dict ({key: np.ndarray}) into `model` (strict)."""
  return load_state_dict(model, convert_hubert_state_dict(sd))


def hubert_large(rngs: nnx.Rngs | None = None, cfg: HubertConfig = HubertConfig(), **kw) -> HubertModel:
  """HuBERT-large with cheap placeholder init (weights are expected to be loaded afterwards)."""
  return HubertModel(cfg, rngs=rngs or nnx.Rngs(0), **kw)


def abstract_hubert(cfg: HubertConfig = HubertConfig(), **kw) -> HubertModel:
  """A HubertModel whose arrays are filled lazily: create with eval_shape, then load a state dict into it."""
  return nnx.eval_shape(lambda: HubertModel(cfg, rngs=nnx.Rngs(0), **kw))


def hubert_from_state_dict(sd: Mapping[str, np.ndarray], cfg: HubertConfig = HubertConfig(), **kw) -> HubertModel:
  """Build and load without materialising random init (saves ~1.3 GB and seconds for the large model)."""
  sd = convert_hubert_state_dict(sd)
  model = abstract_hubert(cfg, **kw)
  from r3p.convert.torch_to_nnx import model_variables, to_jax_layout
  variables = model_variables(model)
  missing = [k for k in variables if k not in sd]
  unexpected = [k for k in sd if k not in variables]
  if missing or unexpected:
    from r3p.convert.torch_to_nnx import StateDictError
    raise StateDictError(f"HuBERT state dict: missing {missing[:3]} ({len(missing)}), unexpected "
                         f"{unexpected[:3]} ({len(unexpected)})")
  for k, var in variables.items():
    val = to_jax_layout(sd[k], getattr(var, "torch_layout", "none"))
    if tuple(val.shape) != tuple(var.get_value().shape):
      from r3p.convert.torch_to_nnx import StateDictError
      raise StateDictError(f"shape mismatch for {k}: checkpoint {np.shape(sd[k])}, "
                           f"model {tuple(var.get_value().shape)}")
    var.set_value(jnp.asarray(val, dtype=var.get_value().dtype))
  return model


# ------------------------------------------------------------------------------------------------ long audio

def chunk_plan(n: int) -> list[tuple[int, int]]:
  """The official chunks [start, end) of an n-sample utterance (see module doc)."""
  chunks = []
  full = n // CHUNK_STRIDE
  for i in range(full):
    chunks.append((CHUNK_STRIDE * i, CHUNK_STRIDE * i + CHUNK_SAMPLES))
  start = CHUNK_STRIDE * full
  if n - start >= KERNEL:
    chunks.append((start, n))
  return chunks


class HubertChunkRunner:
  """Runs HuBERT over 1000-frame chunks with ONE compiled function (fixed shape [1, 320080])."""

  def __init__(self, model: HubertModel, chunk_samples: int = CHUNK_SAMPLES):
    self.model = model
    self.chunk_samples = chunk_samples
    self.chunk_frames = num_frames(chunk_samples, model.config)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, wav, n_valid):
      m = nnx.merge(graphdef, state)
      mask = jnp.arange(self.chunk_frames)[None, :] < n_valid
      return m(wav, mask)

    self._state, self._run = state, run

  def __call__(self, wav_chunk: np.ndarray) -> np.ndarray:
    """[n] (n <= chunk_samples, >= 400) -> [frames(n), hidden] float32."""
    n = wav_chunk.shape[0]
    if n > self.chunk_samples:
      raise ValueError(f"chunk of {n} samples > {self.chunk_samples}")
    t = num_frames(n, self.model.config)
    buf = np.zeros((1, self.chunk_samples), np.float32)
    buf[0, :n] = wav_chunk
    out = self._run(self._state, jnp.asarray(buf), jnp.asarray(t, jnp.int32))
    return np.asarray(out[0, :t])


def extract_hubert(runner: HubertChunkRunner, input_values: np.ndarray, progress: bool = False,
                   pad_to: int = 0) -> np.ndarray:
  """The official chunked feature extraction: normalised wav [N] -> [(N - 80) // 320, hidden] float32.

  pad_to: allocate at least this many frames, zero beyond T (the inference x8 padding without a second copy).
  """
  x = np.asarray(input_values, np.float32)
  n = x.shape[0]
  expected = max((n - (KERNEL - HOP)) // HOP, 0)
  out = np.zeros((max(expected, pad_to), runner.model.config.hidden_size), np.float32)
  pos = 0
  plan = chunk_plan(n)
  it = plan
  if progress and len(plan) > 1:
    from tqdm import tqdm
    it = tqdm(plan, desc="HuBERT", unit="chunk")
  for s, e in it:
    h = runner(x[s:e])
    take = min(h.shape[0], expected - pos)
    out[pos:pos + take] = h[:take]
    pos += take
  if pos < expected:  # cannot happen for the official plan (see PIPELINE.md 5.2); keep the shape honest
    out[pos:] = out[pos - 1] if pos else 0
  return out
