"""SyncNet v2 (Chung & Zisserman 2016, joonson/syncnet_python `SyncNetModel.S`) and Sync-C / Sync-D (LSE-C/-D).

Lip stream: 5-frame windows of 224x224 mouth-region crops, **BGR, raw 0..255** (as cv2 reads them), NDHWC here
([N, 5, 224, 224, 3]). Audio stream: 20 MFCC columns (python_speech_features, `eval.mfcc`) per window, NHWC
[N, 13, 20, 1]. Keys are those of `syncnet_v2.model` (`netcnnlip.*`, `netfclip.*`, `netcnnaud.*`, `netfcaud.*`).

`sync_scores` is SyncNetInstance.evaluate: windows i = 0 .. min(T, len(audio) // 640) - 5 - 1 (syncnet_python
skips the last possible window), distances ||v_i - a_{i+k-15} + 1e-6|| for k = 0..30 (zero audio embedding
outside), mean over windows; Sync-D = min of the means, Sync-C = median - min, offset = 15 - argmin.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from eval._nets import Op, max_pool
from r3p.nn.layers import BatchNorm, Conv2d, Linear, default_precision, param

SAMPLES_PER_FRAME = 640  # 16 kHz audio, 25 fps video
VSHIFT = 15


class Conv3d(nnx.Module):
  """torch.nn.Conv3d on NDHWC input; weight stored [kt, kh, kw, in, out] (torch [out, in, kt, kh, kw])."""

  def __init__(self, cin, cout, k, stride=1, padding=0, *, rngs: nnx.Rngs):
    k = (k,) * 3 if isinstance(k, int) else tuple(k)
    self.stride = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
    p = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
    self.padding = tuple((q, q) for q in p)
    fan_in = cin * int(np.prod(k))
    bound = 1.0 / np.sqrt(fan_in)
    self.weight = param(jax.random.uniform(rngs.params(), k + (cin, cout), jnp.float32, -bound, bound), "conv")
    self.bias = param(jax.random.uniform(rngs.params(), (cout,), jnp.float32, -bound, bound), "none")

  def __call__(self, x):
    y = jax.lax.conv_general_dilated(x, self.weight[...], self.stride, self.padding,
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                     precision=default_precision(jnp.float32))
    return y + self.bias[...]


class Pool(nnx.Module):
  def __init__(self, k, s, p=0):
    self.k, self.s, self.p = k, s, p

  def __call__(self, x):
    return max_pool(x, self.k, self.s, self.p)


def _block(conv, c):
  return [conv, BatchNorm(c, eps=1e-5), Op("relu")]


class SyncNetV2(nnx.Module):
  def __init__(self, num_layers_in_fc_layers: int = 1024, *, rngs: nnx.Rngs):
    r = rngs
    self.netcnnaud = nnx.List(
        _block(Conv2d(1, 64, 3, padding=1, rngs=r), 64) + [Pool((1, 1), (1, 1))]
        + _block(Conv2d(64, 192, 3, padding=1, rngs=r), 192) + [Pool((3, 3), (1, 2))]
        + _block(Conv2d(192, 384, 3, padding=1, rngs=r), 384)
        + _block(Conv2d(384, 256, 3, padding=1, rngs=r), 256)
        + _block(Conv2d(256, 256, 3, padding=1, rngs=r), 256) + [Pool((3, 3), (2, 2))]
        + _block(Conv2d(256, 512, (5, 4), rngs=r), 512))
    self.netfcaud = nnx.List([Linear(512, 512, rngs=r), BatchNorm(512, eps=1e-5), Op("relu"),
                              Linear(512, num_layers_in_fc_layers, rngs=r)])
    self.netcnnlip = nnx.List(
        _block(Conv3d(3, 96, (5, 7, 7), (1, 2, 2), rngs=r), 96) + [Pool((1, 3, 3), (1, 2, 2))]
        + _block(Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1), rngs=r), 256)
        + [Pool((1, 3, 3), (1, 2, 2), (0, 1, 1))]
        + _block(Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1), rngs=r), 256)
        + _block(Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1), rngs=r), 256)
        + _block(Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1), rngs=r), 256) + [Pool((1, 3, 3), (1, 2, 2))]
        + _block(Conv3d(256, 512, (1, 6, 6), rngs=r), 512))
    self.netfclip = nnx.List([Linear(512, 512, rngs=r), BatchNorm(512, eps=1e-5), Op("relu"),
                              Linear(512, num_layers_in_fc_layers, rngs=r)])

  @staticmethod
  def _run(layers, x):
    for layer in layers:
      x = layer(x)
    return x

  def forward_aud(self, mfcc_windows):
    """[N, 13, 20, 1] float32 -> [N, 1024]."""
    x = self._run(self.netcnnaud, jnp.asarray(mfcc_windows, jnp.float32))
    return self._run(self.netfcaud, x.reshape(x.shape[0], -1))

  def forward_lip(self, frames):
    """[N, 5, 224, 224, 3] BGR 0..255 (uint8 or float) -> [N, 1024]."""
    x = self._run(self.netcnnlip, jnp.asarray(frames).astype(jnp.float32))
    return self._run(self.netfclip, x.reshape(x.shape[0], -1))


def build(sd=None, *, seed: int = 0) -> SyncNetV2:
  from eval._nets import load_weights, random_like_torch
  n_out = int(np.shape(sd["netfcaud.3.weight"])[0]) if sd is not None and "netfcaud.3.weight" in sd else 1024
  model = SyncNetV2(n_out, rngs=nnx.Rngs(seed))
  if sd is None:
    sd = random_like_torch(model, seed)
    # same trick as the parity weights: a common offset keeps the zero-padded rows from being the nearest
    for k in ("netfcaud.3.bias", "netfclip.3.bias"):
      sd[k] = np.ones_like(sd[k])
  load_weights(model, sd, what="SyncNet v2")
  return model


def embed_fns(model: SyncNetV2):
  """Jitted (lip_fn, aud_fn) for fixed-size batches of windows."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def lip(state, frames):
    with jax.default_matmul_precision("highest"):
      return nnx.merge(graphdef, state).forward_lip(frames)

  @jax.jit
  def aud(state, mfcc_windows):
    with jax.default_matmul_precision("highest"):
      return nnx.merge(graphdef, state).forward_aud(mfcc_windows)
  return (lambda frames: lip(state, frames)), (lambda w: aud(state, w))


def num_windows(num_frames: int, num_samples: int) -> int:
  return min(num_frames, num_samples // SAMPLES_PER_FRAME) - 5


def mfcc_windows(mfcc_tm: np.ndarray, n: int) -> np.ndarray:
  """[M, 13] time-major MFCC -> [n, 13, 20, 1] windows (columns 4i .. 4i+20)."""
  c = np.asarray(mfcc_tm, np.float32).T  # [13, M]
  need = 4 * (n - 1) + 20
  if c.shape[1] < need:
    c = np.pad(c, ((0, 0), (0, need - c.shape[1])))
  return np.stack([c[:, 4 * i:4 * i + 20] for i in range(n)])[..., None]


def sync_scores(video_emb, audio_emb, vshift: int = VSHIFT) -> dict[str, np.ndarray]:
  """SyncNetInstance.evaluate's numbers from the per-window embeddings (float32, as torch computes them)."""
  from scipy import signal
  v = np.asarray(video_emb, np.float32)
  a = np.asarray(audio_emb, np.float32)
  n = len(v)
  if n < 1:
    raise ValueError("no SyncNet window (fewer than 6 video frames / 0.24 s of audio)")
  win = 2 * vshift + 1
  ap = np.concatenate([np.zeros((vshift, a.shape[1]), np.float32), a, np.zeros((vshift, a.shape[1]), np.float32)])
  dists = np.stack([np.sqrt(np.sum(np.square(v[i][None] - ap[i:i + win] + np.float32(1e-6)), axis=1,
                                   dtype=np.float32)) for i in range(n)])  # [n, 31]
  mean_dists = dists.mean(axis=0, dtype=np.float32)
  minidx = int(np.argmin(mean_dists))
  minval = mean_dists[minidx]
  med = np.sort(mean_dists)[(len(mean_dists) - 1) // 2]  # torch.median: the lower median
  fdist = dists[:, minidx]
  fconf = med - fdist
  fconfm = signal.medfilt(fconf, kernel_size=9).astype(np.float32)
  return {"dists": dists, "mean_dists": mean_dists, "minval": np.float32(minval), "minidx": np.int64(minidx),
          "offset": np.int64(vshift - minidx), "conf": np.float32(med - minval), "fdist": fdist,
          "fconf": fconf.astype(np.float32), "fconfm": fconfm}


def evaluate(model: SyncNetV2, frames_bgr, audio_int16, *, batch_size: int = 20, vshift: int = VSHIFT,
             fns=None) -> dict[str, np.ndarray]:
  """Sync-C/D of [T, 224, 224, 3] BGR crops and 16 kHz int16 audio, windows in fixed-size batches (padded)."""
  from eval import mfcc as mfcc_lib
  frames_bgr = np.asarray(frames_bgr)
  n = num_windows(len(frames_bgr), len(audio_int16))
  if n < 1:
    raise ValueError(f"too short for SyncNet: {len(frames_bgr)} frames, {len(audio_int16)} audio samples "
                     f"(needs at least 6 frames and 0.24 s of audio)")
  lip, aud = fns or embed_fns(model)
  cc = mfcc_windows(mfcc_lib.mfcc(np.asarray(audio_int16), 16000), n)
  ve, ae = [], []
  for s in range(0, n, batch_size):
    idx = np.arange(s, s + batch_size)
    valid = idx < n
    idx = np.where(valid, idx, n - 1)  # pad the last batch by repeating the last window (fixed shapes)
    vid = np.stack([frames_bgr[i:i + 5] for i in idx])
    ve.append(np.asarray(lip(vid))[valid])
    ae.append(np.asarray(aud(cc[idx]))[valid])
  out = sync_scores(np.concatenate(ve), np.concatenate(ae), vshift)
  out["video_embedding"] = np.concatenate(ve)
  out["audio_embedding"] = np.concatenate(ae)
  return out
