"""The `python -m eval.metrics` CLI: results schema, identity, bad inputs (one line, exit 2, no results file)."""
import json
import os

import numpy as np
import pytest

from eval import metrics


def _write_video(path, frames, fps=25):
  import imageio_ffmpeg
  h, w = frames.shape[1:3]
  gen = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", quality=None,
                                    output_params=["-crf", "0", "-pix_fmt", "yuv444p"], macro_block_size=1)
  gen.send(None)
  for f in frames:
    gen.send(np.ascontiguousarray(f))
  gen.close()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  d = tmp_path_factory.mktemp("vid")
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:48, 0:48]
  frames = np.stack([np.stack([128 + 60 * np.sin((x + t) / 5.0), 128 + 60 * np.cos(y / 7.0),
                               100 + x + y + t], -1) for t in range(11)])
  frames = np.clip(frames, 0, 255).astype(np.uint8)
  noisy = np.clip(frames + rng.normal(0, 10, frames.shape), 0, 255).astype(np.uint8)
  _write_video(d / "gt.mp4", frames)
  _write_video(d / "noisy.mp4", noisy)
  _write_video(d / "short.mp4", frames[:7])
  (d / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
  return d


def _run(args, capsys):
  rc = metrics.main(args)
  cap = capsys.readouterr()
  return rc, cap.out, cap.err


def test_identity_and_schema(videos, tmp_path, capsys):
  out = tmp_path / "r.json"
  rc, so, _ = _run(["--pred", str(videos / "gt.mp4"), "--gt", str(videos / "gt.mp4"), "--metrics", "psnr,ssim",
                    "--out", str(out), "--quiet", "--batch", "4", "--plot"], capsys)
  assert rc == 0
  r = json.loads(out.read_text())
  assert set(r) >= {"summary", "frames", "skipped", "unavailable", "versions"}
  assert r["frames"] == 11 and r["skipped"]["psnr_identical_frames"] == 11
  assert r["summary"]["psnr"] == float("inf") and abs(r["summary"]["ssim"] - 1) < 1e-6
  rows = (tmp_path / "r.csv").read_text().splitlines()
  assert rows[0] == "frame,psnr,ssim" and len(rows) == 12
  assert (tmp_path / "r.png").exists() and "psnr" in so


def test_degraded_and_unavailable(videos, tmp_path, capsys):
  out = tmp_path / "r.json"
  rc, _, _ = _run(["--pred", str(videos / "noisy.mp4"), "--gt", str(videos / "gt.mp4"), "--out", str(out),
                   "--quiet", "--batch", "4"], capsys)
  assert rc == 0
  r = json.loads(out.read_text())
  assert 20 < r["summary"]["psnr"] < 40 and r["summary"]["ssim"] < 0.95
  # no weights dir, no source image, no face model file: listed with what they need, not a crash
  for m in ("lpips", "fid", "csim", "sync"):
    assert m in r["unavailable"], r["unavailable"]
  assert "needs" in r["unavailable"]["csim"]


@pytest.mark.parametrize("case,args,msg", [
    ("missing", ["--pred", "NOPE.mp4"], "file not found"),
    ("corrupt", ["--pred", "{d}/corrupt.mp4"], "cannot decode"),
    ("length", ["--pred", "{d}/short.mp4", "--gt", "{d}/gt.mp4"], "--align"),
    ("weights", ["--pred", "{d}/gt.mp4", "--gt", "{d}/gt.mp4", "--metrics", "lpips"], "lpips: needs"),
    ("unknown", ["--pred", "{d}/gt.mp4", "--metrics", "psnr,foo"], "unknown metric"),
    ("nothing", ["--pred", "{d}/gt.mp4"], "nothing to compute"),
])
def test_bad_inputs_one_line_no_file(videos, tmp_path, capsys, case, args, msg):
  out = tmp_path / "r.json"
  rc, _, err = _run([a.format(d=videos) for a in args] + ["--out", str(out), "--quiet"], capsys)
  assert rc == 2 and msg in err, err
  assert len(err.strip().splitlines()) == 1
  assert not out.exists() and not os.path.exists(str(out) + ".tmp")


def test_align_truncates(videos, tmp_path, capsys):
  out = tmp_path / "r.json"
  rc, _, _ = _run(["--pred", str(videos / "short.mp4"), "--gt", str(videos / "gt.mp4"), "--metrics", "psnr",
                   "--align", "--out", str(out), "--quiet", "--batch", "4"], capsys)
  assert rc == 0 and json.loads(out.read_text())["frames"] == 7


def test_benchmark_table(videos, tmp_path, capsys):
  from eval import benchmark
  cfg = {"pairs": [{"name": "a", "gt": str(videos / "gt.mp4")}],
         "configs": [{"name": "same", "pred": str(videos / "gt.mp4")},
                     {"name": "noisy", "pred": str(videos / "noisy.mp4")}]}
  (tmp_path / "b.json").write_text(json.dumps(cfg))
  rc = benchmark.main(["--config", str(tmp_path / "b.json"), "--out", str(tmp_path / "t.csv"),
                       "--metrics", "psnr,ssim"])
  assert rc == 0
  rows = (tmp_path / "t.csv").read_text().splitlines()
  assert rows[0] == "config,psnr,ssim" and rows[1].startswith("same,inf,1") and rows[2].startswith("noisy,")


def _wav(path, samples):
  import wave
  with wave.open(str(path), "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(16000)
    w.writeframes(np.asarray(samples, np.int16).tobytes())


def test_sync_silent_and_short_audio(videos, tmp_path, capsys):
  from tests.conftest import shared_path
  task = shared_path("assets", "mediapipe", "face_landmarker.task")
  _wav(tmp_path / "silent.wav", np.zeros(16000))
  _wav(tmp_path / "short.wav", np.random.default_rng(0).integers(-3000, 3000, 2000))
  for wav, msg in (("silent.wav", "silent"), ("short.wav", "too short")):
    out = tmp_path / f"{wav}.json"
    rc, _, err = _run(["--pred", str(videos / "gt.mp4"), "--gt", str(videos / "gt.mp4"), "--audio",
                       str(tmp_path / wav), "--metrics", "psnr,sync", "--landmarker", str(task), "--random_weights",
                       "--out", str(out), "--quiet"], capsys)
    r = json.loads(out.read_text())
    assert rc == 0 and "psnr" in r["summary"], err
    assert msg in r["unavailable"]["sync"] or "no face" in r["unavailable"]["sync"], r["unavailable"]


def test_frames_without_face_are_skipped(videos, tmp_path, capsys):
  from tests.conftest import shared_path
  task = shared_path("assets", "mediapipe", "face_landmarker.task")
  src = shared_path("assets", "examples", "Macron.png")
  out = tmp_path / "r.json"
  rc, _, err = _run(["--pred", str(videos / "gt.mp4"), "--gt", str(videos / "gt.mp4"), "--src_img", str(src),
                     "--metrics", "psnr,csim,lmd", "--landmarker", str(task), "--random_weights", "--out", str(out),
                     "--quiet", "--batch", "4"], capsys)
  assert rc == 0, err
  r = json.loads(out.read_text())
  assert r["skipped"]["csim"] == 11 and r["skipped"]["lmd"] == 11 and "csim" in r["unavailable"]
  assert "11 of 11 frames without a (single) face" in err
