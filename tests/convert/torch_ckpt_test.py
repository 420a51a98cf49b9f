"""Torch-free checkpoint reader: round trips, legacy format, refusal of foreign globals, broken files."""
import collections
import io
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from r3p.convert.torch_ckpt import (CheckpointError, extract_state_dict, load_torch_checkpoint,
                                    save_torch_checkpoint)


def _all_dtypes(rng):
  return {
      "f32": rng.standard_normal((3, 4)).astype(np.float32),
      "f64": rng.standard_normal((5,)),
      "f16": rng.standard_normal((2, 3, 4)).astype(np.float16),
      "i64": rng.integers(-2 ** 62, 2 ** 62, (7,), dtype=np.int64),
      "i32": rng.integers(-2 ** 31, 2 ** 31 - 1, (2, 2), dtype=np.int32),
      "i8": rng.integers(-128, 127, (9,), dtype=np.int8),
      "u8": rng.integers(0, 255, (4, 4), dtype=np.uint8),
      "bool": rng.random((3, 3)) > 0.5,
      "scalar": np.array(3.5, np.float32),
      "empty": np.zeros((0, 4), np.float32),
      "special": np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], np.float32),
  }


def _assert_same(a, b):
  assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
  assert a.tobytes() == b.tobytes()  # bit-exact, NaNs and signed zeros included


@pytest.mark.parametrize("legacy", [False, True])
def test_round_trip_bit_exact_all_dtypes(tmp_path, legacy):
  rng = np.random.default_rng(0)
  sd = _all_dtypes(rng)
  obj = {"state_dict": {"model": collections.OrderedDict(sd)}, "global_step": 12345, "lr": 1e-4,
         "name": "x", "flags": [True, None, (1, 2 ** 40)], "big": -2 ** 70}
  p = tmp_path / "m.ckpt"
  save_torch_checkpoint(obj, p, legacy=legacy)
  if not legacy:
    assert zipfile.is_zipfile(p)
  got = load_torch_checkpoint(p)
  assert isinstance(got["state_dict"]["model"], collections.OrderedDict)
  assert list(got["state_dict"]["model"]) == list(sd)
  for k, v in sd.items():
    _assert_same(got["state_dict"]["model"][k], v)
  assert got["global_step"] == 12345 and got["lr"] == 1e-4 and got["name"] == "x"
  assert got["flags"] == [True, None, (1, 2 ** 40)] and got["big"] == -2 ** 70


def test_bfloat16_widened_exactly(tmp_path):
  x = np.random.default_rng(1).standard_normal((4, 5)).astype(ml_dtypes.bfloat16)
  save_torch_checkpoint({"w": x}, tmp_path / "b.pt")
  got = load_torch_checkpoint(tmp_path / "b.pt")["w"]
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, x.astype(np.float32))
  keep = load_torch_checkpoint(tmp_path / "b.pt", bf16="bfloat16")["w"]
  assert keep.dtype == ml_dtypes.bfloat16 and keep.tobytes() == x.tobytes()


def test_non_contiguous_views_and_shared_storage(tmp_path):
  base = np.arange(60, dtype=np.float32).reshape(6, 10)
  obj = {"base": base, "t": base.T, "strided": base[1:5:2, 3:9:3], "row": base[4], "same": base}
  p = tmp_path / "v.pt"
  save_torch_checkpoint(obj, p)
  with zipfile.ZipFile(p) as zf:  # every view shares the base's single storage
    assert [n for n in zf.namelist() if "/data/" in n] == ["archive/data/0"]
  got = load_torch_checkpoint(p)
  for k, v in obj.items():
    np.testing.assert_array_equal(got[k], v)
    assert got[k].flags.c_contiguous
  got["t"][0, 0] = -1  # returned arrays are independent copies
  assert got["base"][0, 0] == 0


def _legacy_bytes(main_pickle: bytes, keys, storages):
  out = io.BytesIO()
  for o in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
    out.write(pickle.dumps(o, protocol=2))
  out.write(main_pickle)
  out.write(pickle.dumps(keys, protocol=2))
  for a in storages:
    out.write(struct.pack("<q", a.size) + a.tobytes())
  return out.getvalue()


def _g(module, name):
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _s(x: str):
  b = x.encode()
  return b"X" + struct.pack("<I", len(b)) + b


def test_legacy_storage_view_built_by_hand(tmp_path):
  """A legacy tensor on a storage *view* (view_metadata = (view_key, offset, numel)), opcodes written here."""
  root = np.arange(10, dtype=np.float32)
  pid = (b"(" + _s("storage") + _g("torch", "FloatStorage") + _s("7") + _s("cuda:0") + b"J" + struct.pack("<i", 10)
         + b"(" + _s("8") + b"J" + struct.pack("<i", 4) + b"J" + struct.pack("<i", 6) + b"t" + b"tQ")
  tensor = (_g("torch._utils", "_rebuild_tensor") + b"(" + pid + b"J" + struct.pack("<i", 1)
            + b"(J\x02\x00\x00\x00J\x02\x00\x00\x00t" + b"(J\x01\x00\x00\x00J\x02\x00\x00\x00t" + b"tR")
  main = b"\x80\x02}(" + _s("w") + tensor + b"u."
  p = tmp_path / "old.model"
  p.write_bytes(_legacy_bytes(main, ["7"], [root]))
  got = load_torch_checkpoint(p)["w"]
  # view starts at element 4, tensor offset 1 -> elements 5.., size (2, 2) stride (1, 2)
  np.testing.assert_array_equal(got, np.array([[5, 7], [6, 8]], np.float32))


def test_refuses_malicious_global(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned > /dev/null",))
  p = tmp_path / "evil.pt"
  with zipfile.ZipFile(p, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
  with pytest.raises(CheckpointError, match=r"refusing to load global '(posix|os)\.system'"):
    load_torch_checkpoint(p)
  legacy = tmp_path / "evil_legacy.pt"
  legacy.write_bytes(_legacy_bytes(pickle.dumps({"w": Evil()}, protocol=2), [], []))
  with pytest.raises(CheckpointError, match="refusing to load global"):
    load_torch_checkpoint(legacy)
  # an unknown class is refused too, or kept inert on request
  ns = tmp_path / "ns.pt"
  import argparse
  with zipfile.ZipFile(ns, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps({"args": argparse.Namespace(a=1)}, protocol=2))
  with pytest.raises(CheckpointError, match="argparse.Namespace"):
    load_torch_checkpoint(ns)
  assert "argparse.Namespace" in repr(load_torch_checkpoint(ns, allow_unknown=True)["args"])


def test_broken_files_one_line_errors(tmp_path):
  good = tmp_path / "good.pt"
  save_torch_checkpoint({"w": np.ones((100, 100), np.float32)}, good)
  data = good.read_bytes()
  cases = {"trunc_zip": data[: len(data) // 2], "garbage": b"hello world, not a checkpoint" * 10, "empty": b"",
           "plain_pickle": pickle.dumps({"a": 1})}
  legacy = tmp_path / "legacy.pt"
  save_torch_checkpoint({"w": np.ones((100, 100), np.float32)}, legacy, legacy=True)
  ld = legacy.read_bytes()
  cases["trunc_legacy_data"] = ld[:-100]
  cases["trunc_legacy_pickle"] = ld[:60]
  for name, blob in cases.items():
    p = tmp_path / name
    p.write_bytes(blob)
    with pytest.raises(CheckpointError) as e:
      load_torch_checkpoint(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg, msg
  with pytest.raises(CheckpointError, match="no such file"):
    load_torch_checkpoint(tmp_path / "absent.pt")


def test_extract_state_dict():
  a = {"w": np.zeros(2, np.float32)}
  assert extract_state_dict(a) == a
  ckpt = {"state_dict": {"secc2plane_torso": {"module.x.weight": np.ones(1)}, "other": {"y": np.ones(1)}},
          "epoch": 3}
  sd = extract_state_dict(ckpt, "secc2plane_torso")
  assert list(sd) == ["x.weight"]
  assert list(extract_state_dict(ckpt, "secc2plane_torso", strip_prefixes=False)) == ["module.x.weight"]
  with pytest.raises(CheckpointError, match="no model 'nope'.*secc2plane_torso"):
    extract_state_dict(ckpt, "nope")
  with pytest.raises(CheckpointError, match="2 models"):
    extract_state_dict(ckpt)
  lightning = {"state_dict": {"model._orig_mod.a": np.ones(1), "model.b": np.ones(1), "disc.c": np.ones(1)}}
  assert sorted(extract_state_dict(lightning, "model")) == ["a", "b"]
  with pytest.raises(CheckpointError, match="no state dict"):
    extract_state_dict({"epoch": 1})


def test_real_torch_interop(tmp_path):
  torch = pytest.importorskip("torch", reason="torch not installed (test-only extra); torch-free tests cover the rest")
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  obj = {"state_dict": {"m": collections.OrderedDict(
      a=base, t=base.t(), s=base[1:3, ::2], bf=torch.randn(3, 3).to(torch.bfloat16), h=torch.randn(2).half(),
      i=torch.arange(5), b=torch.tensor([True, False]), p=torch.nn.Parameter(torch.ones(2)))}}
  for legacy in (False, True):
    p = tmp_path / f"t{legacy}.pt"
    torch.save(obj, p, _use_new_zipfile_serialization=not legacy)
    got = load_torch_checkpoint(p)["state_dict"]["m"]
    for k, v in obj["state_dict"]["m"].items():
      ref = v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
      np.testing.assert_array_equal(got[k], ref)
  ours = tmp_path / "ours.pt"
  save_torch_checkpoint({"x": np.arange(6, dtype=np.float32).reshape(2, 3).T}, ours)
  back = torch.load(ours, weights_only=True)
  np.testing.assert_array_equal(back["x"].numpy(), np.arange(6, dtype=np.float32).reshape(2, 3).T)
