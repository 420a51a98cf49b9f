"""r3p.audio.drive CLI: good inputs give 25-fps motion of the right length, bad inputs one-line errors.

The default runs swap in a small HuBERT (1024-wide output, 1 layer) so that each case costs seconds; the full-size
random-weight CLI and the 10-minute input run in the slow tests.
"""
import numpy as np
import pytest
import soundfile as sf

from r3p.audio import drive
from r3p.audio import features as F
from r3p.models import hubert as H
from tests.conftest import shared_path

SMALL = H.HubertConfig(num_hidden_layers=1, intermediate_size=1024, conv_dim=(32,) * 7, num_conv_pos_embeddings=16)


@pytest.fixture(scope="module")
def small_driver():
  return drive.AudioToMotion.random(0, SMALL)


@pytest.fixture()
def cli(monkeypatch, small_driver, capsys):
  monkeypatch.setattr(drive.AudioToMotion, "random", classmethod(lambda cls, seed=0, hubert_cfg=None: small_driver))

  def run(*args):
    rc = drive.main(list(args) + ["--no_progress"])
    return rc, capsys.readouterr().err
  return run


def _speechy(sr, seconds, channels):
  from r3p.audio.bench_memory import synth_clip
  x = synth_clip(seconds, sr=sr)[:, :channels]
  return x


def _write(tmp_path, name, x, sr, **kw):
  p = tmp_path / name
  sf.write(p, x, sr, **kw)
  return str(p)


@pytest.mark.parametrize("sr,channels,seconds", [(8000, 1, 2.0), (48000, 2, 2.0), (16000, 2, 1.3)])
def test_good_inputs(tmp_path, cli, sr, channels, seconds):
  wav = _write(tmp_path, f"in{sr}.wav", _speechy(sr, seconds, channels), sr)
  out = str(tmp_path / "m.npz")
  rc, err = cli("--audio", wav, "--out", out, "--random_weights")
  assert rc == 0, err
  assert "RANDOM" in err
  z = np.load(out)
  n16 = int(round(seconds * 16000))
  ta = F.pad_to_multiple(F.num_hubert_frames(n16))
  assert abs(z["hubert"].shape[0] - ta) <= 8 and z["hubert"].shape[1] == 1024
  assert z["exp"].shape == (z["hubert"].shape[0] // 2, 64) and np.all(np.isfinite(z["exp"]))
  assert z["f0"].shape == (z["hubert"].shape[0],) and (z["f0"] > 0).mean() > 0.3  # the synthetic voice is voiced
  assert int(z["fps"]) == 25 and bool(z["random_weights"])


def test_silent_input_warns_and_works(tmp_path, cli):
  wav = _write(tmp_path, "silent.wav", np.zeros((16000, 1)), 16000, subtype="PCM_16")
  out = str(tmp_path / "s.npz")
  rc, err = cli("--audio", wav, "--out", out, "--random_weights", "--blink", "none")
  assert rc == 0 and "silent" in err
  z = np.load(out)
  assert np.all(z["f0"] == 0) and np.all(z["blink"] == 0) and np.all(np.isfinite(z["exp"]))


def test_deterministic_for_seed_and_temperature_matters(tmp_path, cli):
  wav = _write(tmp_path, "a.wav", _speechy(16000, 1.0, 1), 16000, subtype="PCM_16")
  outs = []
  for i, extra in enumerate((["--seed", "3"], ["--seed", "3"], ["--seed", "4"])):
    p = str(tmp_path / f"o{i}.npz")
    assert cli("--audio", wav, "--out", p, "--random_weights", *extra)[0] == 0
    outs.append(np.load(p)["exp"])
  np.testing.assert_array_equal(outs[0], outs[1])
  assert np.abs(outs[0] - outs[2]).max() > 0


@pytest.mark.parametrize("kind", ["empty", "corrupt", "missing", "tiny"])
def test_bad_inputs_one_line_error(tmp_path, cli, kind):
  p = tmp_path / f"{kind}.wav"
  if kind == "empty":
    p.write_bytes(b"")
  elif kind == "corrupt":
    p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\xff" * 300)
  elif kind == "tiny":
    sf.write(p, np.zeros((100, 1)), 16000, subtype="PCM_16")
  rc, err = cli("--audio", str(p), "--out", str(tmp_path / "x.npz"), "--random_weights")
  assert rc == 2
  lines = [ln for ln in err.strip().splitlines() if ln]
  assert len(lines) == 1 and lines[0].startswith("r3p.audio.drive: error:") and str(p) in lines[0]


def test_missing_weights_and_bad_ckpt(tmp_path, cli):
  wav = _write(tmp_path, "a.wav", np.zeros((8000, 1)), 16000, subtype="PCM_16")
  rc, err = cli("--audio", wav, "--out", str(tmp_path / "x.npz"))
  assert rc == 2 and "--random_weights" in err
  bad = tmp_path / "bad.ckpt"
  bad.write_bytes(b"not a checkpoint")
  errors = lambda err: [ln for ln in err.splitlines() if ln.startswith("r3p.audio.drive: error:")]
  rc, err = cli("--audio", wav, "--out", str(tmp_path / "x.npz"), "--hubert_ckpt", str(tmp_path),
                "--a2m_ckpt", str(bad))
  assert rc == 2 and len(errors(err)) == 1 and "HuBERT folder" in err
  hub = tmp_path / "hub"
  hub.mkdir()
  (hub / "pytorch_model.bin").write_bytes(b"garbage")
  rc, err = cli("--audio", wav, "--out", str(tmp_path / "x.npz"), "--hubert_ckpt", str(hub), "--a2m_ckpt", str(bad))
  assert rc == 2 and len(errors(err)) == 1 and "pytorch_model.bin" in err


def test_blink_schedule():
  b = drive.blink_schedule(400, seed=0)
  assert b.shape == (400,) and b.max() <= 1.0 and b[0] == 0
  on = np.flatnonzero(b > 0)
  assert on.min() < 12 and (np.flatnonzero(b[125:140] > 0).size > 0)


@pytest.mark.slow
def test_ten_minute_input(tmp_path, cli):
  wav = _write(tmp_path, "long.wav", _speechy(16000, 600.0, 2), 16000, subtype="PCM_16")
  out = str(tmp_path / "l.npz")
  rc, err = cli("--audio", wav, "--out", out, "--random_weights")
  assert rc == 0, err
  z = np.load(out)
  assert z["exp"].shape == (F.pad_to_multiple(F.num_hubert_frames(9_600_000)) // 2, 64)


@pytest.mark.slow
def test_full_size_random_cli_on_obama(tmp_path, capsys):
  out = str(tmp_path / "o.npz")
  rc = drive.main(["--audio", str(shared_path("assets", "examples", "Obama_5s.wav")), "--out", out,
                   "--random_weights", "--no_progress"])
  assert rc == 0
  z = np.load(out)
  assert z["exp"].shape == (128, 64) and z["hubert"].shape == (256, 1024)


def _write_safetensors(path, sd):
  import json
  import struct
  header, blobs, off = {}, [], 0
  for k, v in sd.items():
    b = np.ascontiguousarray(v, np.float32).tobytes()
    header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
  h = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_cli_with_checkpoint_files_matches_in_memory_models(tmp_path, small_driver, capsys):
  """--hubert_ckpt (transformers folder: config.json + model.safetensors, CTC-wrapped, weight-normed pos conv)
  and --a2m_ckpt (torch zip, {'state_dict': {'model.*'}}, weight_g/weight_v) give exactly the in-memory result."""
  import dataclasses
  import json
  from r3p.convert.torch_ckpt import save_torch_checkpoint
  from r3p.convert.torch_to_nnx import export_state_dict
  hub_sd = {"hubert." + k: v for k, v in export_state_dict(small_driver.hubert.model).items()}
  w = hub_sd.pop("hubert.encoder.pos_conv_embed.conv.weight")
  hub_sd["hubert.encoder.pos_conv_embed.conv.weight_g"] = np.sqrt((w.astype(np.float64) ** 2).sum((0, 1), keepdims=True))
  hub_sd["hubert.encoder.pos_conv_embed.conv.weight_v"] = w
  hub_sd["lm_head.weight"] = np.zeros((32, 1024), np.float32)
  d = tmp_path / "hubert"
  d.mkdir()
  cfg = dataclasses.asdict(SMALL)
  cfg.update(feat_extract_norm="layer", do_stable_layer_norm=True, conv_dim=list(SMALL.conv_dim))
  (d / "config.json").write_text(json.dumps(cfg))
  _write_safetensors(d / "model.safetensors", hub_sd)
  a2m_sd = export_state_dict(small_driver.a2m)
  k = "vae.decoder.wn.cond_layer.weight"
  wv = a2m_sd.pop(k)
  a2m_sd[k + "_g"] = np.sqrt((wv.astype(np.float64) ** 2).sum((1, 2), keepdims=True)).astype(np.float32)
  a2m_sd[k + "_v"] = wv
  save_torch_checkpoint({"state_dict": {"model." + kk: v for kk, v in a2m_sd.items()}, "global_step": 400000},
                        str(tmp_path / "a2m.ckpt"))
  wav = _write(tmp_path, "a.wav", _speechy(16000, 1.5, 2), 16000, subtype="PCM_16")
  rc = drive.main(["--audio", wav, "--out", str(tmp_path / "c.npz"), "--hubert_ckpt", str(d),
                   "--a2m_ckpt", str(tmp_path / "a2m.ckpt"), "--no_progress"])
  assert rc == 0, capsys.readouterr().err
  ref = small_driver(F.load_audio(wav), progress=False)
  got = np.load(tmp_path / "c.npz")
  assert not bool(got["random_weights"])
  np.testing.assert_allclose(got["hubert"], ref["hubert"], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(got["exp"], ref["exp"], atol=1e-5, rtol=1e-4)
