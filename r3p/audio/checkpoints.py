"""Reading the user-supplied official weights for the audio path (no torch, no network).

* HuBERT: a transformers model folder (`facebook/hubert-large-ls960-ft` layout: `config.json` plus
  `model.safetensors` or `pytorch_model.bin`), or one such weights file.
* A2M: the official `model_ckpt_steps_*.ckpt` (torch pickle, `state_dict` -> `model.*` keys).

`.bin` / `.ckpt` files are read with `r3p.convert.torch_ckpt` (torch-free); safetensors with the small reader here.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class CheckpointFileError(ValueError):
  """A weights file/folder that cannot be used (one line, names the path)."""


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """{key: np.ndarray} of a .safetensors file (bfloat16 widened exactly to float32)."""
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) != 8:
      raise CheckpointFileError(f"{path}: truncated safetensors file")
    (n,) = struct.unpack("<Q", head)
    if n > 100_000_000:
      raise CheckpointFileError(f"{path}: not a safetensors file (header length {n})")
    header = json.loads(f.read(n))
    data = f.read()
  out = {}
  for k, meta in header.items():
    if k == "__metadata__":
      continue
    s, e = meta["data_offsets"]
    raw = data[s:e]
    if meta["dtype"] == "BF16":
      arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
    elif meta["dtype"] in _ST_DTYPES:
      arr = np.frombuffer(raw, _ST_DTYPES[meta["dtype"]])
    else:
      raise CheckpointFileError(f"{path}: unsupported dtype {meta['dtype']} for {k}")
    out[k] = arr.reshape(meta["shape"]).copy()
  return out


def _torch_state_dict(path: str) -> dict[str, np.ndarray]:
  try:
    from r3p.convert import torch_ckpt
  except ImportError:  # pragma: no cover - the reader ships with r3p
    raise CheckpointFileError(f"{path}: reading torch checkpoints needs r3p.convert.torch_ckpt") from None
  try:
    obj = torch_ckpt.load_torch_checkpoint(path, allow_unknown=True)
    return torch_ckpt.extract_state_dict(obj, where=path)
  except torch_ckpt.CheckpointError as e:
    raise CheckpointFileError(str(e)) from None


def load_hubert_weights(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """-> (transformers-named state dict, config dict ({} if no config.json))."""
  path = os.fspath(path)
  cfg = {}
  if os.path.isdir(path):
    cp = os.path.join(path, "config.json")
    if os.path.exists(cp):
      with open(cp) as f:
        cfg = json.load(f)
    for name in ("model.safetensors", "pytorch_model.bin"):
      if os.path.exists(os.path.join(path, name)):
        path = os.path.join(path, name)
        break
    else:
      raise CheckpointFileError(f"{path}: no model.safetensors or pytorch_model.bin in this HuBERT folder")
  if not os.path.isfile(path):
    raise CheckpointFileError(f"{path}: no such HuBERT weights file or folder")
  sd = read_safetensors(path) if path.endswith(".safetensors") else _torch_state_dict(path)
  return sd, cfg


def load_a2m_weights(path: str) -> dict[str, np.ndarray]:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointFileError(f"{path}: no such A2M checkpoint file")
  return _torch_state_dict(path)
