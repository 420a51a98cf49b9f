"""r3p.audio.features: loading (channel rule, resampling through ffmpeg, bad files), mel/f0/coarse pitch."""
import numpy as np
import pytest
import soundfile as sf

from r3p.audio import features as F
from tests.conftest import shared_path


def _tone(sr, seconds, channels=1, f=220.0):
  t = np.arange(int(sr * seconds)) / sr
  x = 0.3 * np.sin(2 * np.pi * f * t)
  return np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], 1)


def test_load_16k_pcm16_is_exact(tmp_path):
  x = np.round(_tone(16000, 0.5, 2) * 32767).astype(np.int16)
  p = tmp_path / "a.wav"
  sf.write(p, x, 16000, subtype="PCM_16")
  a = F.load_audio(p)
  assert a.sr == 16000 and a.samples.shape == (8000, 2)
  np.testing.assert_array_equal(a.samples, x / 32768.0)
  np.testing.assert_array_equal(F.hubert_channel(a.samples), x[:, 0] / 32768.0)
  np.testing.assert_array_equal(F.mel_channel(a.samples), ((x[:, 0] / 32768.0 + x[:, 1] / 32768.0) / 2)
                                .astype(np.float32))


@pytest.mark.parametrize("sr,channels", [(8000, 1), (48000, 2), (44100, 1)])
def test_load_resamples_to_16k(tmp_path, sr, channels):
  p = tmp_path / f"a{sr}.wav"
  sf.write(p, _tone(sr, 1.0, channels), sr, subtype="PCM_16")
  a = F.load_audio(p)
  assert a.sr == 16000 and a.samples.shape[1] == channels
  assert abs(a.samples.shape[0] - 16000) <= 16
  # the tone survives resampling: energy at 220 Hz dominates
  spec = np.abs(np.fft.rfft(a.samples[:16000, 0]))
  assert abs(np.argmax(spec) - 220) <= 2


def test_load_flac_and_float_wav(tmp_path):
  for name, kw in (("a.flac", {}), ("f.wav", {"subtype": "FLOAT"})):
    p = tmp_path / name
    sf.write(p, _tone(16000, 0.5), 16000, **kw)
    a = F.load_audio(p)
    assert a.samples.shape == (8000, 1)


def test_bad_files_one_line_errors(tmp_path):
  empty = tmp_path / "empty.wav"
  empty.write_bytes(b"")
  corrupt = tmp_path / "corrupt.wav"
  corrupt.write_bytes(b"RIFF\x00\x00garbage" * 50)
  for p, what in ((tmp_path / "missing.wav", "no such"), (empty, "empty"), (corrupt, "not a readable")):
    with pytest.raises(F.AudioError) as e:
      F.load_audio(p)
    assert what in str(e.value) and "\n" not in str(e.value)


def test_too_short_for_features():
  with pytest.raises(F.AudioError, match="too short"):
    F.extract_features(F.Audio(np.zeros((300, 1)), 16000))


def test_frame_counts():
  assert F.num_hubert_frames(80213) == 250 and F.pad_to_multiple(250) == 256
  assert F.num_mel_frames(80213) == 250
  assert F.num_hubert_frames(399) == 0 and F.num_hubert_frames(400) == 1


def test_f0_to_coarse_rules():
  f0 = np.array([0.0, 30.0, 50.0, 1100.0, 5000.0, 131.0])
  c = F.f0_to_coarse(f0)
  assert c[0] == 1 and c[1] == 1 and c[2] == 1 and c[3] == 255 and c[4] == 255 and 1 < c[5] < 255
  ct = F.f0_to_coarse(f0.astype(np.float32), torch_rounding=True)
  assert np.all(np.abs(ct - c) <= 1)


def test_silence_gives_unvoiced_f0():
  feats = F.extract_features(F.Audio(np.zeros((16000, 1)), 16000))
  assert feats.mel.shape == (49, 80) and np.allclose(feats.mel, -6.0)
  assert np.all(feats.f0 == 0) and feats.hubert_frames == 49 and feats.padded_frames == 56
  assert feats.f0_infer.shape == (56,)


def test_obama_asset_loads():
  a = F.load_audio(shared_path("assets", "examples", "Obama_5s.wav"))
  assert a.samples.shape == (80213, 2)
