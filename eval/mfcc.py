"""MFCC with python_speech_features 0.6 conventions (as syncnet_python calls `mfcc(audio, 16000)`), numpy float64.

Steps: pre-emphasis 0.97 on the raw (unscaled int16) samples; frames of round_half_up(winlen*fs) samples every
round_half_up(winstep*fs), zero-padded at the end so that num_frames = 1 + ceil((len - frame_len) / step); no
window; power spectrum |rfft(frame, nfft)|^2 / nfft; energy = sum of the power spectrum; 26 triangular mel filters
(mel = 2595 log10(1 + hz/700), bins floor((nfft + 1) hz / fs)); log; orthonormal DCT-II, first `numcep`;
sinusoidal lifter 1 + (L/2) sin(pi n / L); c0 replaced by log(energy). Zeros are replaced by float64 eps before
each log, as the reference does. Output [num_frames, numcep] (time-major).
"""
from __future__ import annotations

import decimal
import math

import numpy as np


def _round_half_up(x: float) -> int:
  return int(decimal.Decimal(x).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def hz2mel(hz):
  return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel2hz(mel):
  return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def filterbank(nfilt: int = 26, nfft: int = 512, samplerate: int = 16000, lowfreq: float = 0.0,
               highfreq: float | None = None) -> np.ndarray:
  """[nfilt, nfft//2 + 1] triangular mel filters (python_speech_features.get_filterbanks)."""
  highfreq = highfreq or samplerate / 2
  if highfreq > samplerate / 2:
    raise ValueError(f"highfreq {highfreq} is above the Nyquist frequency {samplerate / 2}")
  mel = np.linspace(hz2mel(lowfreq), hz2mel(highfreq), nfilt + 2)
  bins = np.floor((nfft + 1) * mel2hz(mel) / samplerate)
  fb = np.zeros((nfilt, nfft // 2 + 1))
  for j in range(nfilt):
    for i in range(int(bins[j]), int(bins[j + 1])):
      fb[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
    for i in range(int(bins[j + 1]), int(bins[j + 2])):
      fb[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
  return fb


def frames(signal, frame_len: int, frame_step: int) -> np.ndarray:
  sig = np.asarray(signal, np.float64)
  slen = len(sig)
  n = 1 if slen <= frame_len else 1 + int(math.ceil((slen - frame_len) / frame_step))
  padlen = (n - 1) * frame_step + frame_len
  sig = np.concatenate([sig, np.zeros(padlen - slen)])
  idx = np.arange(frame_len)[None, :] + (np.arange(n) * frame_step)[:, None]
  return sig[idx]


def mfcc(signal, samplerate: int = 16000, winlen: float = 0.025, winstep: float = 0.01, numcep: int = 13,
         nfilt: int = 26, nfft: int = 512, lowfreq: float = 0.0, highfreq: float | None = None,
         preemph: float = 0.97, ceplifter: int = 22, append_energy: bool = True,
         return_intermediates: bool = False):
  """[num_frames, numcep] float64 MFCC of a 1-D signal (int16 values are used unscaled, as the reference does)."""
  from scipy.fft import dct
  x = np.asarray(signal)
  if x.ndim != 1:
    raise ValueError(f"mfcc needs a mono 1-D signal, got shape {x.shape}")
  if x.size == 0:
    raise ValueError("mfcc of an empty signal")
  x = x.astype(np.float64)
  y = np.append(x[0], x[1:] - preemph * x[:-1])
  fr = frames(y, _round_half_up(winlen * samplerate), _round_half_up(winstep * samplerate))
  if fr.shape[1] > nfft:  # the reference truncates frames longer than nfft (with a warning)
    fr = fr[:, :nfft]
  pspec = np.square(np.abs(np.fft.rfft(fr, nfft))) / nfft
  energy = np.sum(pspec, axis=1)
  energy = np.where(energy == 0, np.finfo(float).eps, energy)
  fb = filterbank(nfilt, nfft, samplerate, lowfreq, highfreq)
  feat = pspec @ fb.T
  feat = np.where(feat == 0, np.finfo(float).eps, feat)
  c = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :numcep]
  if ceplifter > 0:
    n = np.arange(c.shape[1])
    c = c * (1 + (ceplifter / 2.0) * np.sin(np.pi * n / ceplifter))
  if append_energy:
    c[:, 0] = np.log(energy)
  if return_intermediates:
    return c, {"preemph_frames": fr, "powspec": pspec, "fbank_energies": feat, "energy": energy, "filterbank": fb}
  return c
