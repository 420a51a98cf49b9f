"""Landmark-HuBERT SyncNet (`LandmarkHubertSyncNet`, official `modules/syncnet/models.py`) in NNX.

Inputs (channels-last): hubert [B, 10, 1024] (10 HuBERT frames, 50 Hz) and mouth_lm [B, 5, lm_dim] (5 video
frames of 468 mediapipe idexp landmarks, point-major x, y, z, lm_dim 1404). Each block is Conv1d (bias) ->
BatchNorm1d -> (+ input if residual) -> ReLU; both towers end at length 1 and width out_dim. Embeddings are
flattened and L2-normalised (eps 1e-12); the final ReLU keeps them >= 0, so their cosine lies in [0, 1] and the
sync loss is BCE(cosine, label) (log clamped at -100, as torch).
Torch keys: `hubert_encoder.{i}.conv_block.{0: conv, 1: bn}.*`, `mouth_encoder.{i}.conv_block.*`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from r3p.nn.conv1d import Conv1d
from r3p.nn.layers import BatchNorm

Array = jax.Array


class ConvBlock(nnx.Module):
  def __init__(self, cin, cout, k, stride, padding, residual=False, *, dtype, param_dtype, rngs):
    self.residual = residual
    self.conv_block = nnx.List([Conv1d(cin, cout, k, stride=stride, padding=padding, dtype=dtype,
                                       param_dtype=param_dtype, rngs=rngs),
                                BatchNorm(cout, dtype=dtype, param_dtype=param_dtype)])

  def __call__(self, x, train: bool = False):
    out = self.conv_block[1](self.conv_block[0](x), use_running_average=not train)
    if self.residual:
      out = out + x
    return jax.nn.relu(out)


def _tower(cin, first, base, n_per_block, out_dim, second_stride, **kw):
  """(cin -> first), (first -> base), res..., (-> 2 base, s2), res..., (-> 4 base, s=second_stride), res...,
  4 base k3 p1, 4 base k3 p0, 4 base 1x1, out_dim 1x1."""
  b1, b2, b4 = base, 2 * base, 4 * base
  L = [ConvBlock(cin, first, 3, 1, 1, **kw), ConvBlock(first, b1, 3, 1, 1, **kw)]
  L += [ConvBlock(b1, b1, 3, 1, 1, residual=True, **kw) for _ in range(n_per_block - 1)]
  L += [ConvBlock(b1, b2, 3, 2, 1, **kw)]
  L += [ConvBlock(b2, b2, 3, 1, 1, residual=True, **kw) for _ in range(n_per_block - 1)]
  L += [ConvBlock(b2, b4, 3, second_stride, 1, **kw)]
  L += [ConvBlock(b4, b4, 3, 1, 1, residual=True, **kw) for _ in range(n_per_block - 1)]
  L += [ConvBlock(b4, b4, 3, 1, 1, **kw), ConvBlock(b4, b4, 3, 1, 0, **kw), ConvBlock(b4, b4, 1, 1, 0, **kw),
        ConvBlock(b4, out_dim, 1, 1, 0, **kw)]
  return nnx.List(L)


def l2_normalize(x, eps: float = 1e-12):
  return x / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(x), -1, keepdims=True)), eps)


def cosine_similarity(a, b, eps: float = 1e-8):
  """torch.nn.functional.cosine_similarity along the last axis."""
  na = jnp.sqrt(jnp.sum(jnp.square(a), -1))
  nb = jnp.sqrt(jnp.sum(jnp.square(b), -1))
  return jnp.sum(a * b, -1) / jnp.maximum(na * nb, eps)


def bce(p, label):
  """Binary cross entropy per element, logs clamped at -100 (torch)."""
  return -(label * jnp.maximum(jnp.log(p), -100.0) + (1 - label) * jnp.maximum(jnp.log1p(-p), -100.0))


class LandmarkHubertSyncNet(nnx.Module):
  def __init__(self, lm_dim: int = 468 * 3, audio_dim: int = 1024, num_layers_per_block: int = 3,
               base_hid_size: int = 128, out_dim: int = 1024, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.hubert_encoder = _tower(audio_dim, base_hid_size, base_hid_size, num_layers_per_block, out_dim, 2, **kw)
    self.mouth_encoder = _tower(lm_dim, 96, base_hid_size, num_layers_per_block, out_dim, 1, **kw)

  @staticmethod
  def _run(tower, x, train):
    for blk in tower:
      x = blk(x, train)
    return x.reshape(x.shape[0], -1)

  def __call__(self, hubert: Array, mouth_lm: Array, train: bool = False) -> tuple[Array, Array]:
    """-> (audio_embedding, mouth_embedding), each [B, out_dim], L2-normalised. `train`: batch statistics."""
    mouth = self._run(self.mouth_encoder, mouth_lm, train)
    audio = self._run(self.hubert_encoder, hubert, train)
    return l2_normalize(audio), l2_normalize(mouth)

  @staticmethod
  def sync_loss(audio_embedding, mouth_embedding, label) -> tuple[Array, Array]:
    """-> (BCE per clip [B], cosine [B]); label: scalar or [B] in {0, 1}."""
    d = cosine_similarity(audio_embedding, mouth_embedding)
    return bce(d, jnp.broadcast_to(jnp.asarray(label, d.dtype), d.shape)), d


def a2m_sync_loss(syncnet: LandmarkHubertSyncNet, hubert, mouth_lm3d, y_mask, starts, train: bool = True):
  """The A2M task's sync loss: for each start t (video frames), clips mouth_lm3d[:, t:t+5] / hubert[:, 2t:2t+10]
  of every sequence; BCE(cosine, 1) averaged over clips lying fully inside y_mask. `starts` [n] int (injectable
  random draws; the official draws max(1, 8096 // B) of them uniformly in [0, T - 6])."""
  starts = jnp.asarray(starts)
  mouth = jax.vmap(lambda t: jax.lax.dynamic_slice_in_dim(mouth_lm3d, t, 5, axis=1))(starts)
  aud = jax.vmap(lambda t: jax.lax.dynamic_slice_in_dim(hubert, 2 * t, 10, axis=1))(starts)
  msk = jax.vmap(lambda t: jax.lax.dynamic_slice_in_dim(y_mask, t, 5, axis=1))(starts)
  n, b = mouth.shape[:2]
  mouth, aud = mouth.reshape(n * b, 5, -1), aud.reshape(n * b, 10, -1)
  valid = (msk.reshape(n * b, 5).sum(-1) == 5).astype(mouth.dtype)
  a, m = syncnet(aud, mouth, train=train)
  loss, _ = syncnet.sync_loss(a, m, 1.0)
  return jnp.sum(loss * valid) / jnp.sum(valid)
