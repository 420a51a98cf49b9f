"""Audio-to-motion: `PitchContourVAEModel` (official `modules/audio2motion/vae.py`, released A2M config) in NNX.

Layouts (channels-last everywhere; the official tensors are channels-first):
  hubert [B, Ta, 1024] (50 Hz), f0 [B, Ta] Hz, blink [B, Ta, 1] int (0/1), mouth_amp [B, 1], y_mask [B, T] with
  T = Ta / 2 (25 fps; Ta a multiple of 8 so that T is a multiple of 4), y (target exp) [B, T, 64].
  Output: exp [B, T, 64] (3DMM expression coefficients per video frame, already multiplied by y_mask).

Conditioning (feat 128): every 50-Hz stream is downsampled x0.5 by *nearest* (even frames); mel_encoder and
pitch_encoder are Conv1d(k3, no bias) -> BatchNorm1d -> GELU -> Conv1d(k3, no bias); pitch = Embedding(300) of
f0_to_coarse(f0); blink = Embedding(2); mouth_amp * a learned 128-vector; concat (512) -> cond_proj -> g [B, T, 128].

FVAE (latent 16 at T/4, hidden 256): g_pre_net Conv1d(k8, s4, p2) -> g_sqz; posterior encoder (training) ->
z = m + eps * exp(logs); prior = N(0, I) pushed through a 4-step mean-only residual-coupling flow conditioned on
g_sqz; decoder = ConvTranspose1d(k4, s4) -> WN(4 layers, conditioned on full-rate g) -> Conv1d(256 -> 64).

Random draws are injectable: `infer(..., noise=)` takes the prior draw eps [B, T/4, 16] (z_p = eps * temperature),
`train_forward(..., noise=)` the posterior eps [B, T/4, 16]; when absent they are drawn from `rngs`/`key`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.convert.torch_to_nnx import fold_weight_norm, load_state_dict
from r3p.nn.conv1d import Conv1d, ConvTranspose1d
from r3p.nn.layers import BatchNorm, Embedding, Linear, param
from r3p.nn.wavenet import WN, ResidualCouplingBlock

Array = jax.Array

F0_BIN, F0_MEL_LO, F0_MEL_HI = 256, 1127 * math.log(1 + 50 / 700), 1127 * math.log(1 + 1100 / 700)
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def f0_to_coarse(f0: Array) -> Array:
  """Coarse pitch bins in [1, 255], the model's float32 arithmetic with torch rounding (+0.5, truncate)."""
  f0 = f0.astype(jnp.float32)
  mel = 1127.0 * jnp.log(1.0 + f0 / 700.0)
  mel = jnp.where(mel > 0, (mel - np.float32(F0_MEL_LO)) * np.float32(F0_BIN - 2)
                  / np.float32(F0_MEL_HI - F0_MEL_LO) + 1.0, mel)
  mel = jnp.where(mel <= 1, 1.0, mel)
  mel = jnp.where(mel > F0_BIN - 1, float(F0_BIN - 1), mel)
  return (mel + 0.5).astype(jnp.int32)


def downsample_nearest(x: Array) -> Array:
  """F.interpolate(scale_factor=0.5, mode='nearest') along time (axis 1): frames 0, 2, 4, ..."""
  return x[:, 0:2 * (x.shape[1] // 2):2]


class Gelu(nnx.Module):
  def __call__(self, x, **kw):
    return jax.nn.gelu(x, approximate=False)


def conv_bn_gelu_conv(cin, cout, *, dtype, param_dtype, rngs) -> nnx.List:
  """[Conv1d(k3, no bias), BatchNorm1d, GELU, Conv1d(k3, no bias)]: an nnx.List so that the torch Sequential keys
  (`mel_encoder.0.weight`, `mel_encoder.1.running_mean`, `mel_encoder.3.weight`) are the NNX paths."""
  kw = dict(dtype=dtype, param_dtype=param_dtype)
  return nnx.List([Conv1d(cin, cout, 3, padding=1, bias=False, rngs=rngs, **kw), BatchNorm(cout, **kw), Gelu(),
                   Conv1d(cout, cout, 3, padding=1, bias=False, rngs=rngs, **kw)])


def apply_conv_bn_gelu_conv(layers: nnx.List, x, train: bool = False):
  x = layers[1](layers[0](x), use_running_average=not train)
  return layers[3](layers[2](x))


class FVAEEncoder(nnx.Module):
  def __init__(self, cin, hidden, latent, kernel, n_layers, gin, stride, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.stride, self.latent = stride, latent
    self.pre_net = nnx.List([Conv1d(cin, hidden, 2 * stride, stride=stride, padding=stride // 2, **kw)])
    self.wn = WN(hidden, kernel, 1, n_layers, gin, **kw)
    self.out_proj = Conv1d(hidden, 2 * latent, 1, **kw)

  def __call__(self, x, x_mask, g_sqz, noise):
    x = self.pre_net[0](x)
    mask = x_mask[:, ::self.stride][:, :x.shape[1]]
    x = x * mask
    x = self.wn(x, mask, g_sqz) * mask
    x = self.out_proj(x)
    m, logs = x[..., :self.latent], x[..., self.latent:]
    z = m + noise * jnp.exp(logs)
    return z, m, logs, mask


class FVAEDecoder(nnx.Module):
  def __init__(self, latent, hidden, cout, kernel, n_layers, gin, stride, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.pre_net = nnx.List([ConvTranspose1d(latent, hidden, stride, stride=stride, **kw)])
    self.wn = WN(hidden, kernel, 1, n_layers, gin, **kw)
    self.out_proj = Conv1d(hidden, cout, 1, **kw)

  def __call__(self, z, x_mask, g, record=None):
    x = self.pre_net[0](z)
    if record is not None:
      record["dec_pre_net_out"] = x
    x = x * x_mask
    x = self.wn(x, x_mask, g) * x_mask
    return self.out_proj(x)


class FVAE(nnx.Module):
  def __init__(self, in_out=64, hidden=256, latent=16, kernel=5, enc_layers=8, dec_layers=4, gin=128, stride=4,
               glow_hidden=64, glow_kernel=3, glow_blocks=4, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.latent, self.stride = latent, stride
    self.g_pre_net = nnx.List([Conv1d(gin, gin, 2 * stride, stride=stride, padding=stride // 2, **kw)])
    self.encoder = FVAEEncoder(in_out, hidden, latent, kernel, enc_layers, gin, stride, **kw)
    self.prior_flow = ResidualCouplingBlock(latent, glow_hidden, glow_kernel, 1, glow_blocks, 4, gin, **kw)
    self.decoder = FVAEDecoder(latent, hidden, in_out, kernel, dec_layers, gin, stride, **kw)


@dataclasses.dataclass(frozen=True)
class A2MConfig:
  in_out_dim: int = 64
  audio_in_dim: int = 1024
  feat_dim: int = 128
  use_mouth_amp_embed: bool = True
  use_eye_amp_embed: bool = False


class PitchContourVAEModel(nnx.Module):
  """The released A2M network. `infer` for inference, `train_forward` for training (see module doc)."""

  def __init__(self, cfg: A2MConfig = A2MConfig(), *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    f = cfg.feat_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.cfg = cfg
    self.blink_embed = Embedding(2, f, rngs=rngs, **kw)
    self.mel_encoder = conv_bn_gelu_conv(cfg.audio_in_dim, f, rngs=rngs, **kw)
    self.pitch_embed = Embedding(300, f, rngs=rngs, **kw)
    self.pitch_embed.weight[...] = self.pitch_embed.weight[...] * f ** -0.5  # official init: normal(0, f^-1/2)
    self.pitch_encoder = conv_bn_gelu_conv(f, f, rngs=rngs, **kw)
    cond_dim = 3 * f
    if cfg.use_mouth_amp_embed:
      self.mouth_amp_embed = param(jax.random.normal(rngs.params(), (f,), param_dtype), "none")
      cond_dim += f
    if cfg.use_eye_amp_embed:
      self.eye_amp_embed = param(jax.random.normal(rngs.params(), (f,), param_dtype), "none")
      cond_dim += f
    self.cond_proj = Linear(cond_dim, f, rngs=rngs, **kw)
    self.vae = FVAE(in_out=cfg.in_out_dim, gin=f, rngs=rngs, **kw)

  # -- conditioning ---------------------------------------------------------------------------------------
  def condition(self, hubert, f0, blink=None, mouth_amp=None, eye_amp=None, train: bool = False, record=None,
                hubert_25fps: bool = False):
    """-> g [B, T, 128] at 25 fps. hubert_25fps: `hubert` is already the even frames [B, Ta / 2, 1024] (identical
    to the model's own nearest x0.5 step; saves a full-rate copy for long clips)."""
    b, ta = f0.shape
    if blink is None:
      blink = jnp.zeros((b, ta, 1), jnp.int32)
    blink_feat = self.blink_embed(blink[..., 0].astype(jnp.int32))
    if record is not None:
      record["blink_embed"] = blink_feat
    blink_feat = downsample_nearest(blink_feat)
    mel = hubert if hubert_25fps else downsample_nearest(hubert)
    f0_ds = downsample_nearest(f0[..., None])[..., 0]
    coarse = f0_to_coarse(f0_ds)
    cond_feat = apply_conv_bn_gelu_conv(self.mel_encoder, mel, train)
    pitch_feat = apply_conv_bn_gelu_conv(self.pitch_encoder, self.pitch_embed(coarse), train)
    feats = [cond_feat, pitch_feat, blink_feat]
    t = cond_feat.shape[1]
    if self.cfg.use_mouth_amp_embed:
      ma = jnp.full((b, 1), 0.4, cond_feat.dtype) if mouth_amp is None else jnp.asarray(mouth_amp, cond_feat.dtype)
      feats.append(jnp.broadcast_to(ma[:, :, None] * self.mouth_amp_embed[...][None, None], (b, t, self.cfg.feat_dim)))
    if self.cfg.use_eye_amp_embed:
      ea = jnp.full((b, 1), 0.4, cond_feat.dtype) if eye_amp is None else jnp.asarray(eye_amp, cond_feat.dtype)
      feats.append(jnp.broadcast_to(ea[:, :, None] * self.eye_amp_embed[...][None, None], (b, t, self.cfg.feat_dim)))
    g = self.cond_proj(jnp.concatenate(feats, -1))
    if record is not None:
      record.update(f0_coarse=coarse, mel_encoder_out=cond_feat, pitch_encoder_out=pitch_feat, cond=g)
    return g

  # -- inference ------------------------------------------------------------------------------------------
  def infer(self, hubert, f0, y_mask=None, blink=None, mouth_amp=None, *, temperature: float = 1.0,
            noise: Array | None = None, key: Array | None = None, record=None, hubert_25fps: bool = False):
    """-> exp [B, T, 64]. noise: the prior draw eps [B, T/4, 16] (else drawn from `key`)."""
    g = self.condition(hubert, f0, blink, mouth_amp, train=False, record=record, hubert_25fps=hubert_25fps)
    vae = self.vae
    g_sqz = vae.g_pre_net[0](g)
    shape = (g_sqz.shape[0], g_sqz.shape[1], vae.latent)
    if noise is None:
      noise = jax.random.normal(key if key is not None else jax.random.key(0), shape, g.dtype)
    z_p = noise * temperature
    z = vae.prior_flow(z_p, 1.0, g_sqz, reverse=True)
    x = vae.decoder(z, 1.0, g, record=record)
    if record is not None:
      record.update(g_sqz=g_sqz, prior_noise_scaled=z_p, prior_flow_out=z, decoder_out=x)
    if y_mask is not None:
      x = x * y_mask[..., None]
    return x

  # -- training -------------------------------------------------------------------------------------------
  def train_forward(self, hubert, f0, y, y_mask, blink=None, mouth_amp=None, *, noise: Array | None = None,
                    key: Array | None = None, train_bn: bool = True, record=None):
    """Training forward (BatchNorm on batch statistics, updating running stats when `train_bn`).

    Returns dict: pred [B, T, 64] (x_recon * y_mask), loss_kl (scalar), z_p, m_q, logs_q [B, T/4, 16].
    """
    g = self.condition(hubert, f0, blink, mouth_amp, train=train_bn, record=record)
    vae = self.vae
    g_sqz = vae.g_pre_net[0](g)
    mask = y_mask[..., None].astype(g.dtype)
    t_sqz = -(-y.shape[1] // vae.stride)
    if noise is None:
      noise = jax.random.normal(key if key is not None else jax.random.key(0), (y.shape[0], t_sqz, vae.latent),
                                g.dtype)
    z_q, m_q, logs_q, mask_sqz = vae.encoder(y, mask, g_sqz, noise)
    x_recon = vae.decoder(z_q, mask, g, record=record)
    # log q(z|x) - log N(flow(z); 0, I), masked mean over valid latent frames and channels (log-det 0).
    logq = -jnp.square(z_q - m_q) / (2 * jnp.exp(2 * logs_q)) - logs_q - LOG_SQRT_2PI
    z_p = vae.prior_flow(z_q, mask_sqz, g_sqz)
    logp = -jnp.square(z_p) / 2 - LOG_SQRT_2PI
    loss_kl = jnp.sum((logq - logp) * mask_sqz) / jnp.sum(mask_sqz) / logq.shape[-1]
    if record is not None:
      record.update(g_sqz=g_sqz, enc_z=z_q, enc_m=m_q, enc_logs=logs_q, enc_mask_sqz=mask_sqz,
                    prior_flow_out=z_p, decoder_out=x_recon)
    return {"pred": x_recon * mask, "loss_kl": loss_kl, "z_p": z_p, "m_q": m_q, "logs_q": logs_q}


# ---------------------------------------------------------------------------------------------- task losses

def mse_loss(pred, y, mask):
  """sum(((pred - y) * mask)^2) / (frames * C)."""
  err = (pred - y) * mask[..., None]
  return jnp.sum(jnp.square(err)) / (jnp.sum(mask) * pred.shape[-1])


def l2_reg_loss(pred, mask):
  return jnp.sum(jnp.square(pred) * mask[..., None]) / (jnp.sum(mask) * pred.shape[-1])


def lap_loss(pred, mask):
  """Temporal Laplacian (-0.5, 1, -0.5) with zero padding, squared, masked, / (frames * C)."""
  p = jnp.pad(pred, ((0, 0), (1, 1), (0, 0)))
  lap = p[:, 1:-1] - 0.5 * (p[:, :-2] + p[:, 2:])
  return jnp.sum(jnp.square(lap) * mask[..., None]) / (jnp.sum(mask) * pred.shape[-1])


# mediapipe-468 point weights of the landmark loss (eyes 3, upper eyelids 20, lips 5, 8 unmatched points 0).
_EYE = [33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7, 263, 466, 388, 387, 386, 385,
        384, 398, 362, 382, 381, 380, 374, 373, 390, 249]
_UPPER_EYE = [161, 160, 159, 158, 157, 388, 387, 386, 385, 384]
_LIPS = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95,
         61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146]
_UNMATCHED = [93, 127, 132, 234, 323, 356, 361, 454]


def lm468_weights() -> np.ndarray:
  w = np.ones(468, np.float32)
  w[_EYE] = 3
  w[_UPPER_EYE] = 20
  w[_LIPS] = 5
  w[_UNMATCHED] = 0
  return w


def lm468_mse_loss(pred_lm, gt_lm, mask):
  """Weighted MSE on [B, T, 468*3] landmarks, / (frames * 1404)."""
  b, t, c = pred_lm.shape
  w = jnp.repeat(jnp.asarray(lm468_weights()), 3)
  err = jnp.square(pred_lm - gt_lm) * mask[..., None] * w
  return jnp.sum(err) / (jnp.sum(mask) * c)


def kl_annealing(step, max_lambda: float = 0.02, t1: int = 2000, t2: int = 2000):
  """Cyclical KL weight: linear 0 -> max over t1 steps, flat for t2, period t1 + t2."""
  s = step % (t1 + t2)
  return jnp.where(s < t1, s / t1 * max_lambda, max_lambda)


LOSS_WEIGHTS = {"mse_exp": 0.5, "mse_idexp_lm3d": 0.5, "lap_exp": 1.0, "l2_reg_exp": 0.1, "sync_lip_lm3d": 0.2}


def a2m_losses(out: Mapping[str, Array], y, y_mask, step, *, lambda_kl: float = 0.02, extra: Mapping | None = None):
  """The A2M task's exp-mode loss dict and its weighted total. `extra` may add 'mse_idexp_lm3d' /
  'sync_lip_lm3d' values (they need the 3DMM landmarks, computed outside this module)."""
  losses = {"kl": out["loss_kl"], "mse_exp": mse_loss(out["pred"], y, y_mask),
            "lap_exp": lap_loss(out["pred"], y_mask), "l2_reg_exp": l2_reg_loss(out["pred"], y_mask)}
  losses.update(extra or {})
  weights = dict(LOSS_WEIGHTS, kl=kl_annealing(step, lambda_kl))
  total = sum(weights[k] * v for k, v in losses.items())
  return total, losses


# ---------------------------------------------------------------------------------------------- checkpoints

def convert_a2m_state_dict(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Official A2M state dict (optionally with the `model.` prefix of the training checkpoint) -> these keys
  (identical names; weight norm folded, dim 0)."""
  out = {}
  for k, v in sd.items():
    if k.startswith("model."):
      k = k[len("model."):]
    out[k] = np.asarray(v)
  return fold_weight_norm(out, dim=0)


def load_a2m_state_dict(model: PitchContourVAEModel, sd: Mapping[str, np.ndarray]) -> list[str]:
  return load_state_dict(model, convert_a2m_state_dict(sd))
