"""Memory of the streaming path (`Portrait.animate`: SECC blocks -> network chunks -> mp4 writer) must not grow with
the number of rendered frames: a clip twice as long may not raise the peak of host memory (numpy buffers, seen by
tracemalloc) nor of live JAX arrays. Holding the frames (a list in the writer, kept host outputs, an unbounded queue)
would add ≥ 0.75 MB per extra 512² frame, i.e. ≥ 37 MB for the 50 extra frames here, far above the bound. Both
clips are at least one full SECC block (50 frames) long: the block is the one thing whose size depends on the
clip length (up to 50 frames).

Driven by a coefficient file (no audio front end: its memory is measured by `r3p.audio.bench_memory`) through the
stand-in network of `tiny_net.py`; the writer queue is cut to 2 frames so that encoder timing cannot move the peak.
"""
import functools
import tracemalloc

import jax
import numpy as np
import pytest

from r3p import video

SHORT, LONG = 50, 100       # frames: one full SECC block vs two
FRAME_BYTES = 512 * 512 * 3  # one uint8 output frame
BOUND = 10 * FRAME_BYTES     # allowed peak growth from SHORT to LONG frames (≈ 7.9 MB; holding frames: ≥ 37 MB)


def _coeffs(tmp_path, t: int):
  exp = 0.1 * np.sin(np.arange(t)[:, None] * 0.3 + np.arange(64)[None]).astype(np.float32)
  p = tmp_path / f"exp_{t}.npz"
  np.savez(p, exp=exp)
  return p


def _run(portrait, src, drv, out, **kw) -> tuple[int, int, int]:
  """(frames written, tracemalloc peak above the start, peak bytes of live JAX arrays sampled at every chunk)."""
  tracemalloc.start()
  base = tracemalloc.get_traced_memory()[0]
  live, done = 0, 0
  try:
    for ev in portrait.animate(src, drv, out, chunk=4, **kw):
      if ev.stage == "render":
        live = max(live, sum(a.nbytes for a in jax.live_arrays()))
      done = ev.done
    peak = tracemalloc.get_traced_memory()[1] - base
  finally:
    tracemalloc.stop()
  return done, peak, live


@pytest.fixture(scope="module")
def small_queue(monkeypatch_module):
  monkeypatch_module.setattr(video, "Mp4Writer", functools.partial(video.Mp4Writer, max_queue=2))


@pytest.fixture(scope="module")
def monkeypatch_module():
  mp = pytest.MonkeyPatch()
  yield mp
  mp.undo()


@pytest.fixture(scope="module")
def runs(portrait, assets, tmp_path_factory, small_queue):
  tmp = tmp_path_factory.mktemp("mem")
  _run(portrait, assets["src"], _coeffs(tmp, 4), tmp / "warm.mp4")  # compiles, prepares and caches the source
  short = _run(portrait, assets["src"], _coeffs(tmp, SHORT), tmp / "short.mp4")
  long = _run(portrait, assets["src"], _coeffs(tmp, LONG), tmp / "long.mp4")
  print(f"\n{SHORT} frames: tracemalloc peak {short[1] / 2**20:.1f} MB, live JAX arrays {short[2] / 2**20:.1f} MB; "
        f"{LONG} frames: {long[1] / 2**20:.1f} MB, {long[2] / 2**20:.1f} MB")
  return short, long


def test_host_memory_flat_in_clip_length(runs):
  short, long = runs
  assert short[0] == SHORT and long[0] == LONG
  assert long[1] - short[1] < BOUND, (short[1], long[1])


def test_live_device_arrays_flat_in_clip_length(runs):
  short, long = runs
  assert long[2] - short[2] < BOUND, (short[2], long[2])


def test_the_bound_catches_held_frames(portrait, assets, tmp_path, small_queue, monkeypatch):
  """The criterion fails when the writer keeps its frames (a leak of the kind the two tests above guard against)."""
  held = []
  write = video.Mp4Writer.func.write  # the class behind the partial above

  def leaky_write(self, frame):
    held.append(np.array(frame))
    write(self, frame)

  monkeypatch.setattr(video.Mp4Writer.func, "write", leaky_write)
  # Clip lengths whose SECC block sizes (4, 50) the fixture above has compiled already.
  short = _run(portrait, assets["src"], _coeffs(tmp_path, 4), tmp_path / "a.mp4")
  held.clear()
  long = _run(portrait, assets["src"], _coeffs(tmp_path, SHORT), tmp_path / "b.mp4")
  assert long[1] - short[1] > BOUND  # 46 extra held frames ≈ 36 MB
