"""Streaming video / audio input for the metrics: frames in fixed-size batches (memory flat in video length)."""
from __future__ import annotations

import os
import subprocess

import numpy as np


class InputError(ValueError):
  """Bad or unreadable input (one line, names the file)."""


def probe(path: str) -> dict:
  """{'fps', 'size' (w, h), 'frames', 'has_audio'} of a video; InputError if it cannot be decoded."""
  import imageio_ffmpeg
  if not os.path.isfile(path):
    raise InputError(f"{path}: file not found")
  try:
    gen = imageio_ffmpeg.read_frames(path)
    meta = next(gen)
    gen.close()
    n, _ = imageio_ffmpeg.count_frames_and_secs(path)
  except (RuntimeError, OSError, StopIteration, ValueError) as e:
    raise InputError(f"{path}: cannot decode the video ({str(e).strip().splitlines()[-1] if str(e) else type(e).__name__})") from None
  if n <= 0:
    raise InputError(f"{path}: the video has no frames")
  return {"fps": float(meta.get("fps") or 0.0), "size": tuple(meta["size"]), "frames": int(n),
          "has_audio": bool(meta.get("audio_codec"))}


def iter_frames(path: str, *, limit: int | None = None, size: tuple[int, int] | None = None):
  """uint8 RGB frames [H, W, 3] one by one (decoded by ffmpeg as a stream); `size` (w, h) rescales them."""
  import imageio_ffmpeg
  kw = {"output_params": ["-vf", f"scale={size[0]}:{size[1]}:flags=area"]} if size else {}
  gen = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24", **kw)
  meta = next(gen)
  w, h = size or meta["size"]
  try:
    for i, raw in enumerate(gen):
      if limit is not None and i >= limit:
        break
      if len(raw) != w * h * 3:
        raise InputError(f"{path}: frame {i} is truncated (corrupt video)")
      yield np.frombuffer(raw, np.uint8).reshape(h, w, 3)
  finally:
    gen.close()


def iter_batches(frames, batch: int):
  """Group an iterator of equally shaped arrays into (stacked [batch, ...] padded by repeating the last, n_valid)."""
  buf = []
  for f in frames:
    buf.append(f)
    if len(buf) == batch:
      yield np.stack(buf), batch
      buf = []
  if buf:
    n = len(buf)
    buf += [buf[-1]] * (batch - n)
    yield np.stack(buf), n


def read_audio_16k(path: str) -> np.ndarray:
  """Mono 16 kHz int16 samples of an audio or video file, decoded by ffmpeg (-ac 1 -ar 16000, as syncnet_python)."""
  import imageio_ffmpeg
  if not os.path.isfile(path):
    raise InputError(f"{path}: file not found")
  cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", path, "-vn", "-ac", "1", "-ar", "16000",
         "-f", "s16le", "-acodec", "pcm_s16le", "-"]
  r = subprocess.run(cmd, capture_output=True)
  if r.returncode != 0:
    msg = r.stderr.decode(errors="replace").strip().splitlines()
    raise InputError(f"{path}: cannot decode audio ({msg[-1] if msg else 'ffmpeg failed'})")
  a = np.frombuffer(r.stdout, np.int16)
  if a.size == 0:
    raise InputError(f"{path}: no audio samples")
  return a
