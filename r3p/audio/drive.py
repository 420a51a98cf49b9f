"""Audio file -> per-frame expression codes (25 fps) through HuBERT-large and the A2M VAE.

    python -m r3p.audio.drive --audio FILE --out motion.npz [--hubert_ckpt DIR] [--a2m_ckpt F]
        [--mouth_amp 0.45] [--temperature 0.2] [--seed 0] [--blink period|none] [--random_weights]

Steps (PIPELINE.md §5-§6): load and resample to 16 kHz (ffmpeg for non-16-kHz/16-bit files); HuBERT on channel 0,
normalised over the whole clip, in official 20-s chunks through one compiled chunk function; zero-pad to a multiple
of 8 frames (Ta); Praat f0 of the mono mix, cut / zero-padded to Ta; A2M inference with blink = 0,
mouth_amp and temperature as given, prior noise from `jax.random.key(seed)`.

Output npz: `exp` [T, 64] float32 (T = Ta / 2 frames at 25 fps; the last frames may lie past the audio, as in the
official pipeline whose mux trims them), `hubert` [Ta, 1024] float32 (zero-padded), `f0` [Ta] Hz, `blink` [T]
(eye-closure fraction in [0, 1] of the official 'period' schedule, zeros with --blink none; applied later by SECC
editing), scalars `fps`, `audio_seconds`, `mouth_amp`, `temperature`, `seed`, `random_weights`.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.audio import features as F
from r3p.models import audio2motion as A
from r3p.models import hubert as H

FPS = 25
RANDOM_HUBERT_CONFIG = H.HubertConfig()  # tests swap in a small config with the same 1024-wide output


def blink_schedule(num_frames: int, seed: int = 0, period_s: float = 5.0) -> np.ndarray:
  """The official 'period' blink: every period_s seconds a blink of 8-12 frames with closure -4/T^2 t^2 + 4/T t."""
  rng = np.random.default_rng(seed)
  out = np.zeros(num_frames, np.float32)
  step = int(FPS * period_s)
  for i in range(0, num_frames, step):
    dur = int(rng.integers(8, 13))
    for t in range(dur):
      j = i + t
      if j >= num_frames - 1:
        break
      out[j] = -4 / dur ** 2 * t ** 2 + 4 / dur * t
  return out


@dataclasses.dataclass
class AudioToMotion:
  """HuBERT chunk runner + A2M model (+ whether the weights are random)."""
  hubert: H.HubertChunkRunner
  a2m: A.PitchContourVAEModel
  random_weights: bool = False

  @classmethod
  def from_checkpoints(cls, hubert_ckpt: str, a2m_ckpt: str) -> "AudioToMotion":
    from r3p.audio import checkpoints as C
    sd, cfg = C.load_hubert_weights(hubert_ckpt)
    model = H.hubert_from_state_dict(sd, H.HubertConfig.from_dict(cfg) if cfg else H.HubertConfig())
    del sd
    a2m = A.PitchContourVAEModel(rngs=nnx.Rngs(0))
    A.load_a2m_state_dict(a2m, C.load_a2m_weights(a2m_ckpt))
    return cls(H.HubertChunkRunner(model), a2m)

  @classmethod
  def random(cls, seed: int = 0, hubert_cfg: H.HubertConfig | None = None) -> "AudioToMotion":
    hub = H.HubertModel(hubert_cfg or RANDOM_HUBERT_CONFIG, rngs=nnx.Rngs(seed))
    return cls(H.HubertChunkRunner(hub), A.PitchContourVAEModel(rngs=nnx.Rngs(seed + 1)), random_weights=True)

  def hubert_features(self, speech: np.ndarray, progress: bool = True, pad_to: int = 0) -> np.ndarray:
    """[N] channel-0 samples -> [max(T, pad_to), 1024] (zero beyond T = (N - 80) // 320)."""
    return H.extract_hubert(self.hubert, F.normalize_speech(speech), progress=progress, pad_to=pad_to)

  def motion(self, hubert_padded: np.ndarray, f0: np.ndarray, *, mouth_amp: float, temperature: float,
             seed: int) -> np.ndarray:
    """[Ta, 1024], [Ta] -> exp [Ta / 2, 64]."""
    t = hubert_padded.shape[0] // 2
    noise = jax.random.normal(jax.random.key(seed), (1, -(-t // 4), 16), jnp.float32)
    graphdef, state = nnx.split(self.a2m)
    # Only the even frames enter the model (its first step is a nearest x0.5 downsampling): half the copy.
    exp = _a2m_infer(graphdef, state, jnp.asarray(hubert_padded[None, 0:2 * t:2]),
                     jnp.asarray(f0[None], jnp.float32), jnp.full((1, 1), mouth_amp, jnp.float32),
                     jnp.float32(temperature), noise)
    return np.asarray(exp[0])

  def from_features(self, feats: F.AudioFeatures, audio_seconds: float, *, mouth_amp: float = 0.45,
                    temperature: float = 0.2, seed: int = 0, blink: str = "period", progress: bool = True,
                    timings: dict | None = None) -> dict[str, np.ndarray]:
    """The driver on precomputed features. Consumes `feats` (drops its waveforms once HuBERT has run, so that
    long clips do not hold them during the A2M step)."""
    if feats.hubert_frames == 0:
      raise F.AudioError("audio too short for one HuBERT frame")
    t0 = time.perf_counter()
    hub = self.hubert_features(feats.speech, progress, pad_to=feats.padded_frames)
    feats.speech = feats.wav_mono = None
    f0 = feats.f0_infer
    t1 = time.perf_counter()
    exp = self.motion(hub, f0, mouth_amp=mouth_amp, temperature=temperature, seed=seed)
    if timings is not None:
      timings.update(hubert_s=t1 - t0, a2m_s=time.perf_counter() - t1)
    t = exp.shape[0]
    return {"exp": exp.astype(np.float32), "hubert": hub, "f0": f0,
            "blink": blink_schedule(t, seed) if blink == "period" else np.zeros(t, np.float32),
            "fps": np.int32(FPS), "audio_seconds": np.float32(audio_seconds), "mouth_amp": np.float32(mouth_amp),
            "temperature": np.float32(temperature), "seed": np.int32(seed),
            "random_weights": np.bool_(self.random_weights)}

  def __call__(self, audio: F.Audio, **kw) -> dict[str, np.ndarray]:
    """Audio (16 kHz) -> the output dict (see module doc); keywords as `from_features`."""
    return self.from_features(F.extract_features(audio), audio.seconds, **kw)


@functools.partial(jax.jit, static_argnums=(0,))
def _a2m_infer(graphdef, state, hubert, f0, mouth_amp, temperature, noise):
  model = nnx.merge(graphdef, state)
  t = hubert.shape[1]  # hubert holds the even (25-fps) frames
  return model.infer(hubert, f0, jnp.ones((1, t), hubert.dtype), None, mouth_amp, temperature=temperature,
                     noise=noise, hubert_25fps=True)


def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m r3p.audio.drive", description=__doc__.split("\n\n")[0])
  ap.add_argument("--audio", required=True, help="audio file (wav/mp3/m4a/flac; any rate, any channels)")
  ap.add_argument("--out", required=True, help="output .npz")
  ap.add_argument("--hubert_ckpt", help="HuBERT-large weights: transformers folder or weights file")
  ap.add_argument("--a2m_ckpt", help="official A2M checkpoint (model_ckpt_steps_*.ckpt)")
  ap.add_argument("--mouth_amp", type=float, default=0.45)
  ap.add_argument("--temperature", type=float, default=0.2)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--blink", choices=("period", "none"), default="period")
  ap.add_argument("--random_weights", action="store_true",
                  help="seeded random weights for both networks (smoke test: the motion is meaningless)")
  ap.add_argument("--no_progress", action="store_true")
  return ap


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  from r3p.audio.checkpoints import CheckpointFileError
  from r3p.convert.torch_to_nnx import StateDictError

  def fail(msg: str) -> int:
    print(f"r3p.audio.drive: error: {msg}", file=sys.stderr)
    return 2

  if not args.random_weights and not (args.hubert_ckpt and args.a2m_ckpt):
    return fail("--hubert_ckpt and --a2m_ckpt are required (or --random_weights for a smoke test)")
  if not 0.0 <= args.temperature <= 10.0:
    return fail(f"--temperature {args.temperature} out of range [0, 10]")
  if not args.out.endswith(".npz"):
    return fail(f"--out {args.out}: expected a .npz path")
  try:
    t0 = time.perf_counter()
    audio = F.load_audio(args.audio)
    if audio.num_samples < F.N_FFT:
      return fail(f"{args.audio}: too short ({audio.num_samples} samples at 16 kHz; at least {F.N_FFT} needed)")
    if np.max(np.abs(audio.samples)) < 1e-4:
      print(f"r3p.audio.drive: warning: {args.audio} is silent; the motion will be close to neutral",
            file=sys.stderr)
    if args.random_weights:
      print("r3p.audio.drive: using RANDOM seeded weights (smoke test; the motion is meaningless)", file=sys.stderr)
      driver = AudioToMotion.random(args.seed)
    else:
      driver = AudioToMotion.from_checkpoints(args.hubert_ckpt, args.a2m_ckpt)
    feats, seconds = F.extract_features(audio), audio.seconds
    del audio  # long clips: the multi-channel waveform is not needed past the features
    out = driver.from_features(feats, seconds, mouth_amp=args.mouth_amp, temperature=args.temperature,
                               seed=args.seed, blink=args.blink, progress=not args.no_progress)
  except (F.AudioError, CheckpointFileError, StateDictError) as e:
    return fail(str(e).splitlines()[0])
  np.savez(args.out, **out)
  print(f"r3p.audio.drive: {seconds:.2f} s of audio -> {out['exp'].shape[0]} frames of exp at {FPS} fps "
        f"in {time.perf_counter() - t0:.1f} s -> {args.out}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
