"""Reader of the name-seeded weights format (`r3p-seeded-weights/1`) used by the parity fixtures.

A folder holds `weights_spec.json` (every state_dict key in order, with shape, dtype and one rule) and
`weights_stored.npz` (tensors kept verbatim). For rules `normal` / `abs_normal` the value is built from
`z = default_rng(crc32(key) + seed).standard_normal(shape)` in float64 and cast once to the key's dtype.
PCG64 is stable across numpy versions, so the rebuilt tensors are bit-exact. Layouts are torch's.
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib

import numpy as np

FORMAT = "r3p-seeded-weights/1"


def _tensor(entry: dict, seed: int, stored) -> np.ndarray:
  shape, dtype, rule, key = tuple(entry["shape"]), np.dtype(entry["dtype"]), entry["rule"], entry["key"]
  if rule == "stored":
    v = np.asarray(stored[key])
    if v.shape != shape or v.dtype != dtype:
      raise ValueError(f"{key}: stored tensor is {v.shape} {v.dtype}, spec says {shape} {dtype}")
    return v.copy()
  if rule == "const":
    return np.full(shape, entry["value"], dtype=dtype)
  z = np.random.default_rng(zlib.crc32(key.encode("utf-8")) + int(seed)).standard_normal(shape)
  if rule == "normal":
    v = np.float64(entry["mean"]) + np.float64(entry["std_eff"]) * z
  elif rule == "abs_normal":
    v = np.abs(np.float64(entry["center"]) + np.float64(entry["scale"]) * z) + np.float64(entry["offset"])
  else:
    raise ValueError(f"{key}: unknown weight rule {rule!r}")
  return np.asarray(v).astype(dtype).reshape(shape)


def load_seeded_state_dict(folder: str, verify: bool = False) -> dict[str, np.ndarray]:
  """{torch key: np.ndarray} in spec order, torch shapes/dtypes/layouts."""
  spec_path = os.path.join(folder, "weights_spec.json")
  if not os.path.exists(spec_path):
    raise FileNotFoundError(f"{folder}: no weights_spec.json (not a seeded-weights folder)")
  with open(spec_path) as f:
    spec = json.load(f)
  if spec.get("format") != FORMAT:
    raise ValueError(f"{spec_path}: unknown weights format {spec.get('format')!r} (expected {FORMAT})")
  stored_path = os.path.join(folder, spec.get("stored_file", "weights_stored.npz"))
  stored = {}
  if os.path.exists(stored_path):
    with np.load(stored_path) as npz:
      stored = {k: npz[k] for k in npz.files}
  sd = {e["key"]: _tensor(e, spec["seed"], stored) for e in spec["tensors"]}
  if verify:
    want = spec.get("checksum", {}).get("sha256")
    got = state_dict_checksum(sd)
    if want and want != got:
      raise ValueError(f"{folder}: rebuilt weights checksum {got[:12]} != spec {want[:12]}")
  return sd


def state_dict_checksum(sd: dict[str, np.ndarray]) -> str:
  """SHA-256 over key NUL dtype.str NUL repr(shape) NUL little-endian bytes, per key in order."""
  h = hashlib.sha256()
  for k, a in sd.items():
    a = np.ascontiguousarray(a)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    h.update(k.encode("utf-8") + b"\0")
    h.update(a.dtype.str.encode() + b"\0" + repr(tuple(a.shape)).encode() + b"\0")
    h.update(a.tobytes())
  return h.hexdigest()
