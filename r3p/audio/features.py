"""Audio loading and the official audio features (PIPELINE.md §5).

Conventions (all at 16 kHz):
  * `load_audio(path)` -> `Audio(samples [N, C] float32 = int16 / 32768 exactly, sr=16000)`. The official code
    reads float64; 16-bit values are exact in float32, which halves the memory of long clips. Like the official
    pipeline (which
    runs `ffmpeg -ar 16000` to a 16-bit wav first), anything that is not already a 16-kHz 16-bit PCM file goes
    through ffmpeg (the binary shipped with imageio-ffmpeg) to 16-bit PCM at 16 kHz, channels kept.
  * Channel rule: HuBERT sees channel 0 only (`hubert_channel`); mel / f0 see the mean of the channels in float32
    (`mel_channel`, librosa's mono mix).
  * Mel: STFT n_fft 512, hop 320, win 512, periodic Hann, no centering, magnitude; 80 Slaney mel bands 80-7600 Hz;
    log10(max(1e-6, .)), [Tm, 80] with Tm = 1 + (N - 512) // 320 (50 Hz).
  * f0: Praat autocorrelation pitch on the mono wav right-padded to (N // 320 + 1) * 320 samples; time step 0.02 s,
    voicing threshold 0.6, floor 80 Hz, ceiling 750 Hz; Hz, 0 = unvoiced; padded with its last value / cut to Tm.
  * HuBERT frames: T = (N - 80) // 320 (frame i covers samples [320 i, 320 i + 400)); inference zero-pads to a
    multiple of 8 frames, and f0 is cut / zero-padded to that length. Video frame j <-> audio frames 2j, 2j + 1.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile

import numpy as np

SAMPLE_RATE = 16000
HOP = 320                 # samples per 50-Hz frame
HUBERT_KERNEL = 400       # receptive field of the HuBERT conv stack, samples
N_FFT, WIN, N_MELS, FMIN, FMAX = 512, 512, 80, 80, 7600
F0_TIME_STEP, F0_VOICING, F0_FLOOR, F0_CEIL = HOP / SAMPLE_RATE, 0.6, 80.0, 750.0
F0_BIN, F0_MEL_LO_HZ, F0_MEL_HI_HZ = 256, 50.0, 1100.0
X_MULTIPLY = 8            # inference pads the HuBERT frames to a multiple of this


class AudioError(ValueError):
  """A bad audio input (the message is one line, naming the file)."""


@dataclasses.dataclass
class Audio:
  samples: np.ndarray   # [N, C] float32 (or float64), int16 / 32768
  sr: int
  path: str = ""

  @property
  def num_samples(self) -> int:
    return int(self.samples.shape[0])

  @property
  def seconds(self) -> float:
    return self.num_samples / self.sr


def ffmpeg_exe() -> str:
  try:
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()
  except Exception as e:  # pragma: no cover - depends on the install
    raise AudioError(f"ffmpeg not available (pip install imageio-ffmpeg): {e}") from None


def _read_wav(path: str) -> tuple[np.ndarray, int]:
  import soundfile as sf
  x, sr = sf.read(path, dtype="float32", always_2d=True)
  return x, int(sr)


def load_audio(path: str, sr: int = SAMPLE_RATE) -> Audio:
  """Read any common audio file as 16-bit PCM at `sr`, channels kept (see module doc)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise AudioError(f"{path}: no such audio file")
  if os.path.getsize(path) == 0:
    raise AudioError(f"{path}: empty file")
  try:
    import soundfile as sf
    info = sf.info(path)
    direct = info.samplerate == sr and info.subtype == "PCM_16"
  except Exception:
    direct = False
  if direct:
    try:
      x, got_sr = _read_wav(path)
      return _checked(Audio(x, got_sr, path))
    except AudioError:
      raise
    except Exception:
      pass  # let ffmpeg have a go
  with tempfile.TemporaryDirectory() as td:
    out = os.path.join(td, "a16k.wav")
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", path, "-vn", "-f", "wav", "-acodec", "pcm_s16le",
           "-ar", str(sr), "-y", out]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0 or not os.path.exists(out):
      msg = (p.stderr.strip().splitlines() or ["unknown error"])[-1]
      raise AudioError(f"{path}: not a readable audio file ({msg})")
    try:
      x, got_sr = _read_wav(out)
    except Exception as e:
      raise AudioError(f"{path}: decoding failed ({e})") from None
  return _checked(Audio(x, got_sr, path))


def _checked(a: Audio) -> Audio:
  if a.samples.ndim != 2 or a.samples.shape[0] == 0:
    raise AudioError(f"{a.path}: no audio samples")
  if not np.all(np.isfinite(a.samples)):
    raise AudioError(f"{a.path}: audio holds NaN/inf samples")
  return a


def hubert_channel(samples: np.ndarray) -> np.ndarray:
  """The HuBERT input: channel 0 (the official `speech[:, 0]`), a contiguous copy [N] (so the multi-channel
  array can be freed)."""
  s = np.asarray(samples)
  return np.ascontiguousarray(s[:, 0]) if s.ndim == 2 else s


def mel_channel(samples: np.ndarray) -> np.ndarray:
  """The mel/f0 input: librosa's mono mix (mean over channels) in float32 [N]."""
  s = np.asarray(samples, np.float32)
  return s.mean(axis=1, dtype=np.float32) if s.ndim == 2 else s


def num_mel_frames(n: int) -> int:
  return 1 + (n - N_FFT) // HOP if n >= N_FFT else 0


def num_hubert_frames(n: int) -> int:
  """T = (N - 80) // 320: frames whose 400-sample window fits (0 if none)."""
  return max((n - (HUBERT_KERNEL - HOP)) // HOP, 0)


def pad_to_multiple(t: int, m: int = X_MULTIPLY) -> int:
  return -(-t // m) * m


def mel_basis() -> np.ndarray:
  import librosa
  return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX)


def stft_magnitude(wav: np.ndarray) -> np.ndarray:
  """|STFT| [257, Tm], periodic Hann, no centering (librosa, float32 input)."""
  import librosa
  return np.abs(librosa.stft(np.asarray(wav, np.float32), n_fft=N_FFT, hop_length=HOP, win_length=WIN,
                             window="hann", center=False))


def log_mel(wav: np.ndarray) -> np.ndarray:
  """log10 mel spectrogram [Tm, 80] of the mono float32 wav."""
  wav = np.asarray(wav, np.float32)
  if wav.shape[0] < N_FFT:
    raise AudioError(f"audio too short for a mel frame: {wav.shape[0]} samples < {N_FFT}")
  mel = mel_basis() @ stft_magnitude(wav)
  return np.log10(np.maximum(1e-6, mel)).T


def pad_wav_for_f0(wav: np.ndarray) -> np.ndarray:
  """Right-pad with zeros by (N // 320 + 1) * 320 - N samples (the official `librosa_pad_lr`)."""
  n = wav.shape[0]
  return np.pad(wav, (0, (n // HOP + 1) * HOP - n))


def praat_f0(wav_padded: np.ndarray) -> np.ndarray:
  """Praat autocorrelation pitch (Hz, 0 = unvoiced), one value per 20 ms, float64."""
  import parselmouth
  snd = parselmouth.Sound(np.asarray(wav_padded, np.float64), SAMPLE_RATE)
  pitch = snd.to_pitch_ac(time_step=F0_TIME_STEP, voicing_threshold=F0_VOICING, pitch_floor=F0_FLOOR,
                          pitch_ceiling=F0_CEIL)
  return np.asarray(pitch.selected_array["frequency"], np.float64)


def align_f0(f0: np.ndarray, tm: int) -> np.ndarray:
  """Pad with the last value / cut to `tm` frames (the official check: |tm - len| <= 8)."""
  d = tm - len(f0)
  if abs(d) > 8:
    raise AudioError(f"f0 has {len(f0)} frames for {tm} mel frames (official bound: 8)")
  if d > 0:
    f0 = np.concatenate([f0, np.full(d, f0[-1] if len(f0) else 0.0)])
  return f0[:tm]


def mel_and_f0(wav_mono: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mel [Tm, 80] float32, f0 [Tm] float64) of the mono float32 wav."""
  mel = log_mel(wav_mono)
  f0 = align_f0(praat_f0(pad_wav_for_f0(np.asarray(wav_mono, np.float32))), mel.shape[0])
  return mel, f0


def fit_length(x: np.ndarray, t: int) -> np.ndarray:
  """Cut or zero-pad along axis 0 to `t` (the inference f0 <-> HuBERT alignment)."""
  x = np.asarray(x)
  if x.shape[0] >= t:
    return x[:t]
  return np.pad(x, [(0, t - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def f0_to_coarse(f0, torch_rounding: bool = False) -> np.ndarray:
  """Coarse pitch bins in [1, 255] (int64).

  mel = 1127 ln(1 + f0/700); voiced (mel > 0) values map linearly from [mel(50 Hz), mel(1100 Hz)] onto [1, 255];
  <= 1 -> 1, > 255 -> 255. numpy rounding (half to even, float64 in) or, with `torch_rounding`, the model's
  float32 arithmetic with +0.5 and truncation.
  """
  dt = np.float32 if torch_rounding else np.float64
  f0 = np.asarray(f0, dt)
  lo = dt(1127 * np.log(1 + F0_MEL_LO_HZ / 700))
  hi = dt(1127 * np.log(1 + F0_MEL_HI_HZ / 700))
  mel = dt(1127) * np.log(dt(1) + f0 / dt(700))
  voiced = mel > 0
  mel = np.where(voiced, (mel - lo) * dt(F0_BIN - 2) / (hi - lo) + dt(1), mel)
  mel = np.where(mel <= 1, dt(1), mel)
  mel = np.where(mel > F0_BIN - 1, dt(F0_BIN - 1), mel)
  if torch_rounding:
    return (mel + dt(0.5)).astype(np.int64)
  return np.rint(mel).astype(np.int64)


@dataclasses.dataclass
class AudioFeatures:
  """Everything the audio-driven path needs from a file, before HuBERT."""
  speech: np.ndarray     # [N] HuBERT input (channel 0), int16 / 32768
  wav_mono: np.ndarray   # [N] float32
  mel: np.ndarray        # [Tm, 80]
  f0: np.ndarray         # [Tm] Hz (float64)
  hubert_frames: int     # T = (N - 80) // 320
  padded_frames: int     # T rounded up to a multiple of 8 (Ta)

  @property
  def f0_infer(self) -> np.ndarray:
    """f0 cut / zero-padded to Ta, float32 (what the A2M model is fed)."""
    return fit_length(self.f0, self.padded_frames).astype(np.float32)


def extract_features(audio: Audio) -> AudioFeatures:
  if audio.sr != SAMPLE_RATE:
    raise AudioError(f"{audio.path}: expected {SAMPLE_RATE} Hz, got {audio.sr} (load with load_audio)")
  n = audio.num_samples
  if n < N_FFT:
    raise AudioError(f"{audio.path or 'audio'}: too short ({n} samples; at least {N_FFT} = "
                     f"{N_FFT / SAMPLE_RATE * 1000:.0f} ms needed)")
  speech = hubert_channel(audio.samples)
  mono = mel_channel(audio.samples)
  mel, f0 = mel_and_f0(mono)
  t = num_hubert_frames(n)
  return AudioFeatures(speech, mono, mel, f0, t, pad_to_multiple(t))


def normalize_speech(speech: np.ndarray) -> np.ndarray:
  """The Wav2Vec2 processor: float32, zero mean / unit variance over the whole utterance (ddof 0, eps 1e-7)."""
  x = np.asarray(speech, np.float32)
  y = x - x.mean()                      # same float32 operations as (x - mean) / sqrt(var + eps), one buffer
  y /= np.sqrt(x.var() + 1e-7)
  return y
