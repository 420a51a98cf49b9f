"""Video output for `r3p infer`: an mp4 writer fed frame by frame from a background thread, audio muxing, atomic
rename, and the RGBA PNG-sequence writer of `--out_mode alpha`.

Nothing is written under the final name until the whole video (with its audio) is complete: frames go to a
hidden temporary file beside the output, the audio is muxed into a second temporary file, and that one is renamed
onto the output (`os.replace`, atomic on one filesystem). Any failure or `abort()` deletes the temporaries.

ffmpeg comes from `imageio-ffmpeg` (its bundled binary, or the system one it finds).
Codec: H.264, yuv420p, 25 fps, as the official writer (`imageio.get_writer(fps=25, codec='h264')`).
"""
from __future__ import annotations

import os
import pathlib
import queue
import shutil
import subprocess
import tempfile
import threading
from typing import Optional

import numpy as np


class VideoError(RuntimeError):
  """ffmpeg failed, or the output path is unusable (one-line message)."""


def ffmpeg_exe() -> str:
  import imageio_ffmpeg

  return imageio_ffmpeg.get_ffmpeg_exe()


def to_uint8(img) -> np.ndarray:
  """[..., H, W, C] in [−1, 1] -> uint8 with the official rounding ((x + 1) / 2 · 255, truncated)."""
  x = np.clip(np.asarray(img, np.float32), -1.0, 1.0)
  return ((x + 1.0) / 2.0 * 255.0).astype(np.uint8)


def _umask() -> int:
  """The process umask, read without changing it where Linux reports it (os.umask would race other threads)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  m = os.umask(0o022)
  os.umask(m)
  return m


def _publish(tmp: pathlib.Path, out: pathlib.Path, *, folder: bool = False) -> pathlib.Path:
  """Rename a finished temporary onto `out` with the permissions a plain `open(out, 'w')` / `mkdir` would give
  (mkstemp / mkdtemp create 0600 / 0700, private to the owner)."""
  os.chmod(tmp, (0o777 if folder else 0o666) & ~_umask())
  os.replace(tmp, out)
  return out


def _tmp_name(out: pathlib.Path, suffix: str) -> pathlib.Path:
  fd, name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".tmp" + suffix, dir=out.parent)
  os.close(fd)
  return pathlib.Path(name)


class _Threaded:
  """Runs `self._write(frame)` on a worker thread fed through a bounded queue, so that encoding overlaps the
  network's next chunk. Errors on the worker are re-raised at the next `write` / `close`."""

  def __init__(self, max_queue: int = 64):
    self._q: queue.Queue = queue.Queue(maxsize=max_queue)
    self._err: Optional[BaseException] = None
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    while True:
      item = self._q.get()
      if item is None:
        return
      if self._err is None:
        try:
          self._write(item)
        except BaseException as e:  # noqa: BLE001 (re-raised on the caller's thread)
          self._err = e

  def _check(self):
    if self._err is not None:
      raise VideoError(f"writer failed: {str(self._err).splitlines()[0] if str(self._err) else type(self._err)}")

  def write(self, frame):
    self._check()
    self._q.put(np.ascontiguousarray(frame))

  def _drain(self):
    """Let the worker finish the queued frames and stop (a no-op once it has stopped)."""
    if not self._thread.is_alive():
      return
    self._q.put(None)
    self._thread.join()

  # Context manager: a clean exit publishes the output (`close`), an exception removes every partial file (`abort`).
  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      self.close()
    else:
      self.abort()
    return False


class Mp4Writer(_Threaded):
  """`with Mp4Writer(out, audio=wav) as w: w.write(uint8 [H,W,3])`. On a clean exit the file appears under `out`
  with the audio muxed (`-shortest`, as the official driver); on an exception nothing is left behind.

  audio: a file with an audio stream (wav/mp3/mp4...) or None. fps: frames per second of the video.
  """

  def __init__(self, out, *, fps: float = 25.0, audio=None, audio_optional: bool = False, quality: float = 5.0,
               max_queue: int = 64):
    self.out = pathlib.Path(out)
    if self.out.suffix.lower() != ".mp4":
      raise VideoError(f"{out}: the output must be an .mp4 file")
    if self.out.exists() and self.out.is_dir():
      raise VideoError(f"{out}: is a directory")
    self.out.parent.mkdir(parents=True, exist_ok=True)
    self.fps, self.audio, self.quality = float(fps), audio, quality
    self.audio_optional = audio_optional  # a driving video without sound: keep the silent video (as the official)
    self.num_frames = 0
    self._gen = None
    self._silent = _tmp_name(self.out, ".mp4")
    self._size = None
    super().__init__(max_queue)

  def _write(self, frame):
    if frame.dtype != np.uint8:
      frame = to_uint8(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3:
      raise VideoError(f"frames must be [H,W,3], got {frame.shape}")
    if self._gen is None:
      import imageio_ffmpeg

      self._size = frame.shape[:2]
      self._gen = imageio_ffmpeg.write_frames(str(self._silent), (frame.shape[1], frame.shape[0]), fps=self.fps,
                                              codec="libx264", quality=self.quality, pix_fmt_out="yuv420p",
                                              macro_block_size=16, ffmpeg_log_level="error")
      self._gen.send(None)
    elif frame.shape[:2] != self._size:
      raise VideoError(f"frame size changed from {self._size} to {frame.shape[:2]}")
    self._gen.send(frame)
    self.num_frames += 1

  def close(self):
    """Finish encoding, mux the audio, rename onto the output. Returns the output path."""
    try:
      self._drain()
      self._check()
      if self._gen is None:
        raise VideoError("no frame was written")
      self._gen.close()
      self._gen = None
      if self.audio is not None:
        muxed = _tmp_name(self.out, ".mp4")
        try:
          cmd = [ffmpeg_exe(), "-y", "-v", "error", "-i", str(self._silent), "-i", str(self.audio),
                 "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-shortest", str(muxed)]
          r = subprocess.run(cmd, capture_output=True, text=True)
          if r.returncode != 0 and self.audio_optional:
            return _publish(self._silent, self.out)
          if r.returncode != 0:
            msg = (r.stderr.strip().splitlines() or ["?"])[-1]
            raise VideoError(f"ffmpeg could not mux the audio of {self.audio}: {msg}")
          _publish(muxed, self.out)
        finally:
          muxed.unlink(missing_ok=True)
        self._silent.unlink(missing_ok=True)
      else:
        _publish(self._silent, self.out)
      return self.out
    except BaseException:
      self.abort()
      raise

  def abort(self):
    """Stop and delete every temporary file; the output path is left untouched."""
    self._drain()
    if self._gen is not None:
      try:
        self._gen.close()
      except Exception:  # noqa: BLE001 (best effort while failing)
        pass
      self._gen = None
    self._silent.unlink(missing_ok=True)


class PngSequenceWriter(_Threaded):
  """RGBA (or RGB) PNG frames `000000.png, ...` into the folder `out`, written to a temporary sibling folder and
  renamed at `close()`. Frames: uint8 [H,W,4] or [H,W,3]."""

  def __init__(self, out, max_queue: int = 64):
    self.out = pathlib.Path(out)
    if self.out.exists() and not self.out.is_dir():
      raise VideoError(f"{out}: exists and is not a folder")
    self.out.parent.mkdir(parents=True, exist_ok=True)
    self._tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
    self.num_frames = 0
    super().__init__(max_queue)

  def _write(self, frame):
    import cv2

    if frame.dtype != np.uint8:
      frame = to_uint8(frame)
    code = cv2.COLOR_RGBA2BGRA if frame.shape[-1] == 4 else cv2.COLOR_RGB2BGR
    if not cv2.imwrite(str(self._tmp / f"{self.num_frames:06d}.png"), cv2.cvtColor(frame, code)):
      raise VideoError(f"cannot write PNG frames under {self._tmp}")
    self.num_frames += 1

  def close(self):
    try:
      self._drain()
      self._check()
      if self.num_frames == 0:
        raise VideoError("no frame was written")
      if self.out.exists():
        shutil.rmtree(self.out)
      return _publish(self._tmp, self.out, folder=True)
    except BaseException:
      self.abort()
      raise

  def abort(self):
    self._drain()
    shutil.rmtree(self._tmp, ignore_errors=True)


def probe(path) -> dict:
  """{'video_frames', 'duration_s', 'width', 'height', 'has_audio', 'audio_duration_s'} of a media file, from
  ffmpeg's stream report (ffprobe is not bundled with imageio-ffmpeg; the system ffprobe is used when present)."""
  exe = shutil.which("ffprobe")
  if exe:
    import json

    r = subprocess.run([exe, "-v", "error", "-count_frames", "-show_entries",
                        "stream=codec_type,nb_read_frames,width,height,duration", "-of", "json", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
      raise VideoError(f"{path}: ffprobe failed: {r.stderr.strip()}")
    streams = json.loads(r.stdout).get("streams", [])
    v = [s for s in streams if s.get("codec_type") == "video"]
    a = [s for s in streams if s.get("codec_type") == "audio"]
    if not v:
      raise VideoError(f"{path}: no video stream")
    return {"video_frames": int(v[0].get("nb_read_frames", 0)), "duration_s": float(v[0].get("duration", 0)),
            "width": int(v[0]["width"]), "height": int(v[0]["height"]), "has_audio": bool(a),
            "audio_duration_s": float(a[0].get("duration", 0)) if a else 0.0}
  import imageio_ffmpeg

  n, secs = imageio_ffmpeg.count_frames_and_secs(str(path))
  r = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
  info = r.stderr
  import re

  m = re.search(r"Video:.*?(\d{2,5})x(\d{2,5})", info)
  return {"video_frames": int(n), "duration_s": float(secs), "width": int(m.group(1)) if m else 0,
          "height": int(m.group(2)) if m else 0, "has_audio": "Audio:" in info, "audio_duration_s": float("nan")}
