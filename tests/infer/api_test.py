"""r3p.api + r3p.infer end to end with random weights on the real face/audio front ends (MediaPipe, synthetic
face model, a 1-layer random HuBERT, the random A2M) and a small stand-in for the portrait network
(`tiny_net.py`; the full network costs ~10 s per frame on a 2-core CPU: see infer_full_test.py, slow).

One `Portrait` is built per session (fixtures `assets`, `short_wav`, `portrait`: conftest.py); the CLI tests
route `--random_weights` to it, so the source portrait is prepared once (and the cache itself is tested)."""
import os
import pathlib
import wave

import numpy as np
import pytest

from r3p import api, infer, video


@pytest.fixture
def cli(portrait, monkeypatch, capsys):
  """Runs `r3p infer` in-process with --random_weights bound to the session's portrait; returns (rc, stderr)."""
  monkeypatch.setattr(api.Portrait, "random_weights", classmethod(lambda cls, *a, **k: portrait))

  def run(*argv):
    rc = infer.main(list(map(str, argv)))
    return rc, capsys.readouterr().err
  return run


def _no_leftovers(d: pathlib.Path, keep=()):
  left = sorted(p.name for p in d.iterdir() if p.name not in keep)
  assert left == [], f"left behind: {left}"


def test_cli_full_clip_has_the_audio_length(cli, assets, short_wav, tmp_path):
  out = tmp_path / "OUT.mp4"
  rc, err = cli("--random_weights", "--src_img", assets["src"], "--drv_aud", short_wav, "--out_name", out,
                "--no_progress")
  assert rc == 0, err
  info = video.probe(out)
  with wave.open(str(short_wav)) as w:
    secs = w.getnframes() / w.getframerate()
  assert info["has_audio"] and (info["width"], info["height"]) == (512, 512)
  # The driver yields ceil-to-8 HuBERT frames / 2; -shortest trims the video to the audio (±2 frames).
  assert abs(info["video_frames"] / 25 - secs) <= 2 / 25 + 1e-6, (info, secs)
  _no_leftovers(tmp_path, {"OUT.mp4"})


def test_concat_debug_and_alpha(cli, assets, short_wav, tmp_path):
  assets = dict(assets, aud=short_wav)
  out = tmp_path / "dbg.mp4"
  rc, err = cli("--random_weights", "--src_img", assets["src"], "--drv_aud", assets["aud"], "--out_name", out,
                "--out_mode", "concat_debug", "--max_frames", 5, "--chunk", 4, "--no_progress")
  assert rc == 0, err
  info = video.probe(out)
  assert (info["width"], info["height"], info["video_frames"]) == (2560, 512, 5)
  rc, err = cli("--random_weights", "--src_img", assets["src"], "--drv_aud", assets["aud"], "--out_name",
                tmp_path / "m.mp4", "--out_mode", "alpha", "--max_frames", 3, "--no_progress")
  assert rc == 0, err
  import cv2
  pngs = sorted((tmp_path / "m").iterdir())
  assert len(pngs) == 3
  rgba = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
  assert rgba.shape == (512, 512, 4) and rgba[..., 3].std() > 0


def test_same_seed_same_frames_and_chunking(portrait, assets, short_wav):
  assets = dict(assets, aud=short_wav)
  def frames(seed, chunk=4, **kw):
    opts = api.Options(seed=seed, chunk=chunk, max_frames=6, **kw)
    prep = portrait.prepare(assets["src"])
    drv = portrait.driving(prep, assets["aud"], opts)
    return np.stack(list(portrait.frames(prep, drv, opts)))
  a, b, c = frames(0), frames(0), frames(1)
  assert a.shape == (6, 512, 512, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - c).max() > 0  # the seed reaches the A2M noise and the renderer's draws
  # No blinks and no renderer noise dependence on chunk boundaries beyond the key: chunk 1 vs 6 give the same
  # frames up to the stand-in's tiny per-chunk noise term (≤ 0.05 of the tanh input -> a few uint8 levels).
  d = frames(0, chunk=1)
  assert np.abs(a.astype(int) - d).max() <= 8


def test_canonical_planes_cached(portrait, assets, short_wav, tmp_path):
  assets = dict(assets, aud=short_wav)
  import time
  portrait._cache.clear()
  calls = portrait.network.source_calls
  times, msgs = [], []
  for i in range(2):
    t = time.perf_counter()
    evs = list(portrait.animate(assets["src"], assets["aud"], tmp_path / f"o{i}.mp4", max_frames=2))
    times.append(next(e.elapsed_s for e in evs if e.stage == "motion"))
    msgs.append(next(e.message for e in evs if e.stage == "motion"))
  assert portrait.network.source_calls == calls + 1
  assert msgs == ["canonical planes computed", "canonical planes reused"]
  assert times[1] < times[0]
  print(f"time to motion stage: first {times[0]:.2f} s, second (cached) {times[1]:.3f} s")


def _write_wav(path, samples):
  with wave.open(str(path), "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(16000)
    w.writeframes(np.asarray(samples, np.int16).tobytes())


@pytest.mark.parametrize("case", ["missing_src", "corrupt_img", "no_face", "silent", "empty", "unsupported",
                                  "bad_out", "bad_mode_value", "tiny_img", "ckpt_dir",
                                  "bad_devices"])
def test_bad_inputs_one_line_no_output(cli, assets, tmp_path, case):
  import cv2
  src, aud = assets["src"], assets["aud"]
  out = tmp_path / "out" / "o.mp4"
  extra = ["--random_weights"]
  if case == "missing_src":
    src = tmp_path / "nope.png"
  elif case == "corrupt_img":
    src = tmp_path / "c.png"
    src.write_bytes(b"\x89PNG garbage")
  elif case == "no_face":
    src = tmp_path / "gray.png"
    cv2.imwrite(str(src), np.full((256, 256, 3), 128, np.uint8))
  elif case == "tiny_img":
    src = tmp_path / "tiny.png"
    cv2.imwrite(str(src), np.full((20, 20, 3), 128, np.uint8))
  elif case == "silent":
    aud = tmp_path / "s.wav"
    _write_wav(aud, np.zeros(16000))
  elif case == "empty":
    aud = tmp_path / "e.wav"
    _write_wav(aud, np.zeros(0))
  elif case == "unsupported":
    aud = tmp_path / "a.txt"
    aud.write_text("hello")
  elif case == "bad_out":
    out = tmp_path / "out" / "o.avi"
  elif case == "bad_mode_value":
    extra += ["--temperature", "-1"]
  elif case == "bad_devices":
    extra += ["--devices", "99"]
  elif case == "ckpt_dir":
    extra = ["--torso_ckpt", tmp_path, "--a2m_ckpt", tmp_path, "--hubert_ckpt", tmp_path]
  rc, err = cli(*extra, "--src_img", src, "--drv_aud", aud, "--out_name", out, "--no_progress")
  lines = [ln for ln in err.strip().splitlines() if ln.strip()]
  assert rc == 2, err
  print(case, "->", err.strip())
  assert len(lines) == 1 and lines[0].startswith("r3p infer: error: "), err
  assert not out.exists()
  if out.parent.exists():
    _no_leftovers(out.parent)


def _two_faces(src, big_left: bool):
  """The example portrait at full size and at half size side by side on a white square canvas (uint8 RGB)."""
  from r3p.face import landmarks
  img = landmarks.read_image_rgb(src)
  import cv2
  h, w = img.shape[:2]
  small = cv2.resize(img, (w // 2, h // 2))
  canvas = np.full((h + h // 2, w + w // 2, 3), 255, np.uint8)
  if big_left:
    canvas[:h, :w], canvas[h:, w:] = img, small
  else:
    canvas[:h, w // 2:], canvas[h:, :w // 2] = img, small
  return canvas, (w if big_left else w // 2)


@pytest.mark.parametrize("big_left", [True, False])
def test_landmarker_two_faces_largest_or_error(assets, big_left):
  from r3p.face import landmarks
  img, split = _two_faces(assets["src"], big_left)
  lm = landmarks.Landmarker(assets["mp"] / "face_landmarker.task", pick_largest=True)
  strict = landmarks.Landmarker(assets["mp"] / "face_landmarker.task")
  try:
    p = lm.detect_image(img, "two")
    assert lm.faces_seen == 2
    big = p[:, 0].max() <= split if big_left else p[:, 0].min() >= split
    assert big, (p[:, 0].min(), p[:, 0].max(), split)
    assert np.ptp(p[:, 0]) > 0.3 * img.shape[1] / 1.5  # the full-size face, not the half-size one
    with pytest.raises(landmarks.FaceDetectionError, match="2 faces detected"):
      strict.detect_image(img, "two")
  finally:
    lm.close()
    strict.close()


def test_two_faces_in_source_use_largest_and_say_so(portrait, assets, tmp_path, monkeypatch):
  import cv2
  img, _ = _two_faces(assets["src"], big_left=False)
  path = tmp_path / "two.png"
  cv2.imwrite(str(path), img[..., ::-1])
  lines = []
  monkeypatch.setattr(portrait, "log", lines.append)
  prep = portrait.prepare(path, min_face_area_percent=0.01)  # no auto-crop: the layout stays as pasted
  said = [ln for ln in lines if "faces detected" in ln]
  assert said == [f"r3p.face: {path}: 2 faces detected, using the largest"], lines
  # The square canvas keeps its layout at 512²: the big face fills the right/top 2/3, the small one the left/bottom.
  lm = prep["lm478"]  # on the 512² source
  assert lm[:, 0].min() > 512 / 3 - 10 and lm[:, 1].max() < 2 * 512 / 3 + 10, (lm.min(0), lm.max(0))
