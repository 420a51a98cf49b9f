"""r3p.api streaming options on the stand-in network (`tiny_net.py`): --dtype, --devices (8 fake CPU devices,
tests/conftest.py) and concat_debug's whole-clip depth normalisation (cheap first pass)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r3p import api, infer
from r3p.video import to_uint8
from tests.infer.conftest import SMALL_HUBERT
from tests.infer.tiny_net import TinyPortraitNet


def _frames(p, src, drv_file, **kw):
  opts = api.Options(**kw)
  opts.check()
  prep = p.prepare(src)
  drv = p.driving(prep, drv_file, opts)
  return np.stack(list(p.frames(prep, drv, opts)))


# ------------------------------------------------------------------------------------------------ dtype

def test_float32_is_the_default(portrait):
  assert portrait.network.dtype == jnp.float32
  args = infer.build_parser().parse_args(["--src_img", "a.png", "--drv_aud", "b.wav", "--out_name", "o.mp4"])
  assert args.dtype == "float32" and args.devices == "1"
  with pytest.raises(api.InferError, match="--dtype"):
    api.resolve_dtype("float16")


def test_bfloat16_runs_and_reaches_the_network(assets, short_wav, portrait, monkeypatch):
  seen = {}

  def fake_full_network(seed, **kw):  # stands in for the full network built by random_weights
    seen.update(kw)
    return TinyPortraitNet(dtype=kw["dtype"], rngs=nnx.Rngs(seed))

  monkeypatch.setattr(api, "random_portrait_model", fake_full_network)
  mp = assets["mp"]
  p16 = api.Portrait.random_weights(0, landmarker=mp / "face_landmarker.task", dtype="bfloat16",
                                    segmenter=mp / "selfie_segmentation.tflite", hubert_config=SMALL_HUBERT,
                                    log=lambda s: None)
  assert seen["dtype"] == jnp.bfloat16 and p16.network.dtype == jnp.bfloat16
  a16 = _frames(p16, assets["src"], short_wav, max_frames=3, chunk=2)
  a32 = _frames(portrait, assets["src"], short_wav, max_frames=3, chunk=2)
  assert a16.shape == a32.shape == (3, 512, 512, 3) and a16.dtype == np.uint8
  diff = np.abs(a16.astype(int) - a32)
  # bf16 activations: an 8-bit mantissa -> a few uint8 levels off, but not identical (bf16 really ran).
  print(f"bf16 vs fp32 frames: max {diff.max()} levels, mean {diff.mean():.3f}")
  assert 0 < diff.max() <= 12 and diff.mean() < 1.0


# ------------------------------------------------------------------------------------------------ devices

def test_devices_options():
  n = len(jax.local_devices())
  assert n == 8, "tests/conftest.py provides 8 fake CPU devices"
  assert api.Options(chunk=3, devices=8).batch() == 8
  assert api.Options(chunk=9, devices=4).batch() == 12
  assert api.Options(chunk=5, devices="all").batch() == 8
  assert api.Options(chunk=5).batch() == 5
  for bad in (0, 9, "two"):
    with pytest.raises(api.InferError, match="--devices"):
      api.Options(devices=bad).check()


def test_sharded_chunk_equals_one_device(portrait, assets, short_wav):
  opts = api.Options(chunk=8, max_frames=8)
  prep = portrait.prepare(assets["src"])
  drv = portrait.driving(prep, short_wav, opts)
  idx = np.arange(8)
  tgt = np.stack([portrait.renderer.render(prep["id"].reshape(1, -1), drv.exp[i:i + 1])[0][0] for i in idx])
  outs = {}
  for n in (1, 8):
    pl = portrait.network.placement(n)
    sh = portrait._shared_inputs(prep, drv, pl)
    out = portrait.network.chunk(sh["src"], drv.camera[idx], sh["cond_cano"], sh["cond_src"], tgt, sh["kp_s"],
                                 drv.kp_d[idx], jax.random.key(3), 0.9, "concat_debug", pl)
    assert len(out["image"].sharding.device_set) == n
    outs[n] = {k: np.asarray(v) for k, v in out.items()}
  for k in outs[1]:
    err = float(np.abs(outs[1][k] - outs[8][k]).max())
    print(f"{k}: 8 devices vs 1, max|Δ| {err:.2e}")
    assert err <= 1e-6, k


def test_sharded_clip_frames_equal(portrait, assets, short_wav):
  """The whole path (chunk rounded up to the device count, padding, concat_debug's depth first pass) on 8 devices
  vs 1 device with the same chunk."""
  a = _frames(portrait, assets["src"], short_wav, max_frames=11, chunk=8, out_mode="concat_debug")
  b = _frames(portrait, assets["src"], short_wav, max_frames=11, chunk=3, devices=8, out_mode="concat_debug")
  assert a.shape == b.shape == (11, 512, 2560, 3)
  diff = np.abs(a.astype(int) - b)
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-4, (diff.max(), (diff > 0).mean())


# ------------------------------------------------------------------------------------------------ depth range

def test_concat_debug_depth_normalised_over_the_whole_clip(portrait, assets, tmp_path):
  """Frames 0–3 keep the source expression, frames 4–7 a strong one: the stand-in's depth grows with the SECC
  change, so the whole clip's range (official) differs from the first chunk's (the old streaming shortcut)."""
  exp = np.zeros((8, 64), np.float32)
  exp[4:, :8] = 3.0
  drv_file = tmp_path / "coeff.npz"
  np.savez(drv_file, exp=exp)
  opts = api.Options(chunk=4, out_mode="concat_debug", blink_mode="none", seed=5)
  prep = portrait.prepare(assets["src"])
  drv = portrait.driving(prep, drv_file, opts)
  got = np.stack(list(portrait.frames(prep, drv, opts)))
  # Direct whole-clip computation: every chunk's depth (same keys as the pipeline), then one min/max.
  pl = portrait.network.placement(1)
  sh = portrait._shared_inputs(prep, drv, pl)
  ids = prep["id"].reshape(1, -1)
  depth = []
  for c in range(2):
    idx = np.arange(4 * c, 4 * c + 4)
    tgt = np.stack([portrait.renderer.render(ids, drv.exp[i:i + 1])[0][0] for i in idx])
    out = portrait.network.chunk(sh["src"], drv.camera[idx], sh["cond_cano"], sh["cond_src"], tgt, sh["kp_s"],
                                 drv.kp_d[idx], jax.random.fold_in(jax.random.key(5), c), 0.9, "concat_debug")
    depth.append(np.asarray(out["depth"]))
  depth = np.concatenate(depth)
  lo, hi = float(depth.min()), float(depth.max())
  lo1, hi1 = float(depth[:4].min()), float(depth[:4].max())
  r_lo, r_hi = portrait.depth_range(prep, drv, opts)
  assert abs(r_lo - lo) < 1e-5 and abs(r_hi - hi) < 1e-5, ((r_lo, r_hi), (lo, hi))
  panel = lambda d, a, b: to_uint8(np.repeat(np.clip((d - a) / (b - a) * 2 - 1, -1, 1), 3, -1))  # noqa: E731
  want, first_chunk_only = panel(depth[0], lo, hi), panel(depth[0], lo1, hi1)
  assert np.abs(want.astype(int) - first_chunk_only).max() > 20  # the test can tell the two apart
  for j in (0, 7):
    np.testing.assert_allclose(got[j][:, 1536:2048], panel(depth[j], lo, hi), atol=1)
