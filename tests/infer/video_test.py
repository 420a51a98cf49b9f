"""r3p.video: mp4 writer (frames, audio mux, atomic rename, abort), PNG sequences, probe."""
import os

import numpy as np
import pytest
import soundfile as sf

from r3p import video


def _frames(n, h=64, w=96):
  return [np.full((h, w, 3), (i * 20) % 256, np.uint8) for i in range(n)]


def _leftovers(d, keep):
  return sorted(p.name for p in d.iterdir() if p.name not in keep)


def test_mp4_with_audio(tmp_path):
  wav = tmp_path / "a.wav"
  sf.write(wav, 0.1 * np.sin(np.arange(16000 * 2) / 10.0), 16000)  # 2 s
  out = tmp_path / "o.mp4"
  with video.Mp4Writer(out, fps=25, audio=wav) as w:
    for f in _frames(25):  # 1 s of video: -shortest cuts the audio
      w.write(f)
  info = video.probe(out)
  assert info["video_frames"] == 25 and (info["width"], info["height"]) == (96, 64)
  assert info["has_audio"]
  assert abs(info["duration_s"] - 1.0) < 0.1
  assert _leftovers(tmp_path, {"a.wav", "o.mp4"}) == []


def test_mp4_without_audio_and_float_frames(tmp_path):
  out = tmp_path / "o.mp4"
  with video.Mp4Writer(out) as w:
    for i in range(5):
      w.write(np.full((32, 32, 3), -1.0 + 0.4 * i, np.float32))
  info = video.probe(out)
  assert info["video_frames"] == 5 and not info["has_audio"]


def test_abort_leaves_nothing(tmp_path):
  out = tmp_path / "o.mp4"
  with pytest.raises(RuntimeError):
    with video.Mp4Writer(out, audio=tmp_path / "missing.wav") as w:
      w.write(_frames(1)[0])
      raise RuntimeError("boom")
  assert not out.exists() and _leftovers(tmp_path, set()) == []


def test_mux_failure_is_one_line_and_leaves_nothing(tmp_path):
  bad = tmp_path / "bad.wav"
  bad.write_bytes(b"not audio")
  out = tmp_path / "o.mp4"
  w = video.Mp4Writer(out, audio=bad)
  w.write(_frames(1)[0])
  with pytest.raises(video.VideoError) as e:
    w.close()
  assert "\n" not in str(e.value)
  assert not out.exists() and _leftovers(tmp_path, {"bad.wav"}) == []


def test_audio_optional_keeps_silent_video(tmp_path):
  out = tmp_path / "o.mp4"
  silent_src = tmp_path / "src.mp4"
  with video.Mp4Writer(silent_src) as w:
    w.write(_frames(1)[0])
  with video.Mp4Writer(out, audio=silent_src, audio_optional=True) as w:
    for f in _frames(3):
      w.write(f)
  assert video.probe(out)["video_frames"] == 3


def test_bad_frames_and_paths(tmp_path):
  with pytest.raises(video.VideoError):
    video.Mp4Writer(tmp_path / "o.avi")
  w = video.Mp4Writer(tmp_path / "o.mp4")
  w.write(_frames(1)[0])
  w.write(_frames(1, 32, 32)[0])  # size change
  with pytest.raises(video.VideoError, match="size changed"):
    w.close()
  assert _leftovers(tmp_path, set()) == []


def test_png_sequence_rgba(tmp_path):
  import cv2

  out = tmp_path / "seq"
  with video.PngSequenceWriter(out) as w:
    for i in range(3):
      f = np.zeros((16, 16, 4), np.uint8)
      f[..., 3] = 10 * i
      f[..., 0] = 200
      w.write(f)
  names = sorted(os.listdir(out))
  assert names == ["000000.png", "000001.png", "000002.png"]
  img = cv2.imread(str(out / names[2]), cv2.IMREAD_UNCHANGED)
  assert img.shape == (16, 16, 4) and img[0, 0, 3] == 20 and img[0, 0, 2] == 200  # BGRA on disk
  assert _leftovers(tmp_path, {"seq"}) == []


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_normal_permissions(tmp_path, umask):
  """mkstemp/mkdtemp make 0600/0700 temporaries; the published outputs get 0666/0777 & ~umask like any file."""
  import stat
  wav = tmp_path / "a.wav"
  sf.write(wav, 0.1 * np.sin(np.arange(16000) / 10.0), 16000)
  old = os.umask(umask)
  try:
    for name, audio in (("muxed.mp4", wav), ("silent.mp4", None)):
      with video.Mp4Writer(tmp_path / name, audio=audio) as w:
        for f in _frames(2):
          w.write(f)
    with video.PngSequenceWriter(tmp_path / "seq") as w:
      w.write(np.zeros((8, 8, 4), np.uint8))
  finally:
    os.umask(old)
  mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
  assert mode(tmp_path / "muxed.mp4") == 0o666 & ~umask
  assert mode(tmp_path / "silent.mp4") == 0o666 & ~umask
  assert mode(tmp_path / "seq") == 0o777 & ~umask
  assert mode(tmp_path / "seq" / "000000.png") == 0o666 & ~umask
