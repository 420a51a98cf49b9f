"""PyTorch checkpoint files without torch: a restricted unpickler (standard library + numpy only).

Two on-disk formats exist:

* zip (``torch.save`` default since 1.6): an archive ``<root>/data.pkl`` (the pickled object, tensors as
  persistent ids ``('storage', StorageType, key, location, numel)``), raw little-endian storages
  ``<root>/data/<key>``, ``<root>/version`` and ``<root>/byteorder``.
* legacy (``_use_new_zipfile_serialization=False`` and every file written before torch 1.6): five pickles in a
  row - magic number, protocol version 1001, sys info, the object (persistent ids
  ``('storage', StorageType, root_key, location, numel, view_metadata)``), the list of storage keys - followed by
  each storage as ``int64 numel`` + raw bytes, in the order of that list.

Only the globals needed to rebuild tensors and plain containers are resolved (see ``_ALLOWED``); any other global
(``os.system``, a model class, ``argparse.Namespace``...) is refused with a `CheckpointError` naming it, so loading
never runs code from the file. Tensors come back as numpy arrays (copies, C-contiguous; views and shared storages
are resolved with their offsets and strides). bfloat16 becomes float32 exactly (bit shift), other dtypes keep
theirs (float16 stays float16).
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Mapping

import numpy as np

__all__ = ["CheckpointError", "load_torch_checkpoint", "extract_state_dict", "save_torch_checkpoint"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class CheckpointError(ValueError):
  """A file that is not a readable PyTorch checkpoint, or a key that is not in it (one line, names the file)."""


# Storage class name -> numpy dtype of its elements. 'bfloat16' is read as uint16 and widened afterwards.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": "bfloat16", "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"), "ComplexFloatStorage": np.dtype("<c8"),
    "ComplexDoubleStorage": np.dtype("<c16"), "UntypedStorage": np.dtype("u1"),
}
# torch.<dtype> globals (pickled by name, e.g. by _rebuild_tensor_v3) -> storage element type.
_TORCH_DTYPES = {
    "float32": "FloatStorage", "float": "FloatStorage", "float64": "DoubleStorage", "double": "DoubleStorage",
    "float16": "HalfStorage", "half": "HalfStorage", "bfloat16": "BFloat16Storage", "int64": "LongStorage",
    "long": "LongStorage", "int32": "IntStorage", "int": "IntStorage", "int16": "ShortStorage",
    "short": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
    "complex64": "ComplexFloatStorage", "complex128": "ComplexDoubleStorage",
}


def _raw_dtype(name: str) -> np.dtype:
  d = _STORAGE_DTYPES[name]
  return np.dtype("<u2") if d == "bfloat16" else d


# ----------------------------------------------------------------------------------------------------------------
# Objects the unpickler builds instead of torch ones.


class _StorageType:
  """Stands for torch.FloatStorage & co. (only its name is used)."""

  def __init__(self, name: str):
    self.name = name


class _TorchDtype:
  def __init__(self, name: str):
    self.storage = _TORCH_DTYPES[name]


class _StorageRef:
  """A storage named by the pickle; its bytes are attached later (legacy) or at once (zip)."""

  def __init__(self, key: str, stype: str, numel: int, view: tuple | None = None):
    self.key, self.stype, self.numel, self.view = key, stype, int(numel), view


class _TensorRef:
  def __init__(self, storage: _StorageRef, offset: int, size, stride, stype: str | None = None):
    self.storage, self.offset = storage, int(offset)
    self.size = tuple(int(s) for s in size)
    self.stride = tuple(int(s) for s in stride)
    self.stype = stype or storage.stype


class _Opaque:
  """Placeholder for a refused global when the caller asked for `allow_unknown=True` (never calls anything)."""

  name = "?"

  def __new__(cls, *args, **kwargs):
    self = object.__new__(cls)
    self.args, self.state = args, None
    return self

  def __init__(self, *args, **kwargs):
    pass

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f"<unloaded {self.name}>"


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
  # _rebuild_tensor(storage, offset, size, stride) and
  # _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
  if not isinstance(storage, _StorageRef):
    raise CheckpointError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *_ignored):
  t = _rebuild_tensor(storage, storage_offset, size, stride)
  if isinstance(dtype, _TorchDtype):
    t.stype = dtype.storage
  return t


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_state):
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  return func(*args)


def _torch_size(*args):
  return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else tuple(args)


def _torch_device(*args):
  return ":".join(str(a) for a in args)


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
  # protocol-2 pickles store bytes as _codecs.encode(str, 'latin1')
  return str(obj).encode(encoding, errors)


def _numpy_scalar(dtype, data=None):
  dtype = np.dtype(dtype)
  if data is None:
    return dtype.type(0)
  if isinstance(data, str):  # protocol 2 pickles of numpy scalars carry latin-1 strings
    data = data.encode("latin1")
  if dtype.hasobject:
    raise CheckpointError("refusing a numpy object scalar")
  return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_reconstruct(subtype, shape, dtype):
  return np.ndarray.__new__(np.ndarray, shape, dtype)


_BUILTINS = {"set": set, "frozenset": frozenset, "complex": complex, "slice": slice, "bytearray": bytearray,
             "list": list, "dict": dict, "tuple": tuple, "int": int, "float": float, "str": str, "bool": bool,
             "bytes": bytes, "range": range}

_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("torch", "Tensor"): None,   # only ever the `new_type` argument of _rebuild_from_type_v2
    ("torch.nn.parameter", "Parameter"): None,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _Unpickler(pickle.Unpickler):

  def __init__(self, f, *, path: str, persistent_load, allow_unknown: bool):
    super().__init__(f)
    self._path, self._persistent, self._allow_unknown = path, persistent_load, allow_unknown

  def find_class(self, module: str, name: str):
    if (module, name) in _ALLOWED:
      obj = _ALLOWED[(module, name)]
      return obj if obj is not None else _StorageType(name)
    if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if module == "torch" and name in _TORCH_DTYPES:
      return _TorchDtype(name)
    if module in ("builtins", "__builtin__") and name in _BUILTINS:
      return _BUILTINS[name]
    if self._allow_unknown:
      return type(name, (_Opaque,), {"name": f"{module}.{name}"})
    raise CheckpointError(f"{self._path}: refusing to load global '{module}.{name}' (only tensors and plain "
                          f"containers are read; the file holds other pickled objects or is malicious)")

  def persistent_load(self, pid):
    return self._persistent(pid)


def _storage_from_pid(pid, path: str) -> _StorageRef:
  if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
    kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
    if kind == "module":
      raise CheckpointError(f"{path}: the file stores a whole pickled nn.Module (source code), not a state dict")
    raise CheckpointError(f"{path}: unknown persistent id {kind!r}")
  stype = pid[1]
  if not isinstance(stype, _StorageType) or stype.name not in _STORAGE_DTYPES:
    raise CheckpointError(f"{path}: unknown storage type {getattr(stype, 'name', stype)!r}")
  key, numel = str(pid[2]), pid[4]
  view = pid[5] if len(pid) > 5 else None
  return _StorageRef(key, stype.name, numel, tuple(view) if view is not None else None)


# ----------------------------------------------------------------------------------------------------------------
# Tensor materialisation.


def _materialise(t: _TensorRef, storages: Mapping[str, np.ndarray], bf16: str, path: str) -> np.ndarray:
  ref = t.storage
  if ref.key not in storages:
    raise CheckpointError(f"{path}: storage {ref.key!r} is missing (truncated or corrupt file)")
  raw = storages[ref.key]  # raw bytes (uint8) of the root storage
  base_off = 0
  if ref.view is not None:  # legacy storage view: (view_key, element offset, view numel)
    base_off = int(ref.view[1])
  dtype = _raw_dtype(t.stype)
  isz = dtype.itemsize
  n_el = raw.size // isz
  if len(t.size) != len(t.stride):
    raise CheckpointError(f"{path}: tensor with size {t.size} and stride {t.stride}")
  count = int(np.prod(t.size, dtype=np.int64)) if t.size else 1
  off = base_off + t.offset
  if count == 0:
    arr = np.zeros(t.size, dtype)
  else:
    if min(t.stride, default=0) < 0 or min(t.size, default=0) < 0:
      raise CheckpointError(f"{path}: negative size or stride in tensor {t.size}/{t.stride}")
    extent = off + sum((s - 1) * st for s, st in zip(t.size, t.stride)) + 1
    if off < 0 or extent > n_el:
      raise CheckpointError(f"{path}: tensor of size {t.size} needs {extent} elements of storage "
                            f"{ref.key!r}, which has {n_el} (truncated or corrupt file)")
    flat = raw[: n_el * isz].view(dtype)
    arr = np.lib.stride_tricks.as_strided(flat[off:], shape=t.size, strides=tuple(s * isz for s in t.stride))
    arr = np.array(arr, copy=True, order="C")
  if _STORAGE_DTYPES[t.stype] == "bfloat16":
    if bf16 == "bfloat16":
      import ml_dtypes
      arr = arr.view(ml_dtypes.bfloat16)
    else:  # bfloat16 is the top half of a float32: exact
      arr = (arr.astype(np.uint32) << 16).view(np.float32)
  return arr


def _resolve(obj, fn, memo: dict):
  """Replace every _TensorRef in a tree of containers by fn(ref) (containers rebuilt with their types)."""
  if isinstance(obj, _TensorRef):
    return fn(obj)
  if isinstance(obj, (str, bytes, int, float, bool, type(None), np.ndarray, np.generic)):
    return obj
  if id(obj) in memo:
    return memo[id(obj)]
  if isinstance(obj, dict):
    out = type(obj)() if type(obj) in (dict, collections.OrderedDict) else {}
    memo[id(obj)] = out
    for k, v in obj.items():
      out[k] = _resolve(v, fn, memo)
    return out
  if isinstance(obj, list):
    out = []
    memo[id(obj)] = out
    out.extend(_resolve(v, fn, memo) for v in obj)
    return out
  if isinstance(obj, tuple):
    return tuple(_resolve(v, fn, memo) for v in obj)
  if isinstance(obj, (set, frozenset)):
    return obj
  if isinstance(obj, _Opaque):
    obj.args = _resolve(obj.args, fn, memo)
    obj.state = _resolve(obj.state, fn, memo)
    return obj
  return obj


# ----------------------------------------------------------------------------------------------------------------
# Readers.


def _load_zip(path: str, zf: zipfile.ZipFile, bf16: str, allow_unknown: bool):
  names = zf.namelist()
  pkls = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
  if not pkls:
    raise CheckpointError(f"{path}: zip file without data.pkl (not a PyTorch checkpoint)")
  root = min(pkls, key=len)[: -len("data.pkl")]
  storages: dict[str, np.ndarray] = {}

  def persistent_load(pid):
    ref = _storage_from_pid(pid, path)
    if ref.key not in storages:
      member = f"{root}data/{ref.key}"
      try:
        data = zf.read(member)
      except KeyError:
        raise CheckpointError(f"{path}: storage record {member} is missing (truncated or corrupt file)") from None
      storages[ref.key] = np.frombuffer(data, np.uint8)
    return ref

  byteorder = zf.read(f"{root}byteorder").decode().strip() if f"{root}byteorder" in names else "little"
  if byteorder != "little":
    raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
  with zf.open(f"{root}data.pkl") as f:
    obj = _Unpickler(io.BytesIO(f.read()), path=path, persistent_load=persistent_load,
                     allow_unknown=allow_unknown).load()
  return _resolve(obj, lambda t: _materialise(t, storages, bf16, path), {})


def _load_legacy(path: str, f, bf16: str, allow_unknown: bool):
  refs: dict[str, _StorageRef] = {}

  def persistent_load(pid):
    ref = _storage_from_pid(pid, path)
    refs.setdefault(ref.key, ref)
    return ref

  def one(pl=None):
    return _Unpickler(f, path=path, persistent_load=pl or persistent_load, allow_unknown=allow_unknown).load()

  magic = one()
  if magic != _LEGACY_MAGIC:
    raise CheckpointError(f"{path}: a pickle file but not a PyTorch checkpoint (no torch magic number)")
  proto = one()
  if proto != _LEGACY_PROTOCOL:
    raise CheckpointError(f"{path}: unsupported legacy torch protocol {proto!r}")
  sys_info = one()
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
  obj = one()
  keys = one()
  if not isinstance(keys, list):
    raise CheckpointError(f"{path}: corrupt legacy checkpoint (no storage key list)")
  storages: dict[str, np.ndarray] = {}
  for key in keys:
    key = str(key)
    if key not in refs:
      raise CheckpointError(f"{path}: storage {key!r} listed but never used (corrupt file)")
    ref = refs[key]
    isz = _raw_dtype(ref.stype).itemsize
    head = f.read(8)
    if len(head) != 8:
      raise CheckpointError(f"{path}: truncated file (storage {key!r} missing)")
    (numel,) = struct.unpack("<q", head)
    nbytes = numel * isz
    data = f.read(nbytes)
    if len(data) != nbytes:
      raise CheckpointError(f"{path}: truncated file (storage {key!r} has {len(data)} of {nbytes} bytes)")
    storages[key] = np.frombuffer(data, np.uint8)
  return _resolve(obj, lambda t: _materialise(t, storages, bf16, path), {})


def load_torch_checkpoint(path: str | os.PathLike, *, bf16: str = "float32", allow_unknown: bool = False) -> Any:
  """Read a file written by ``torch.save`` (zip or legacy format) without torch.

  Args:
    path: the checkpoint file.
    bf16: 'float32' (default: bfloat16 tensors widened exactly) or 'bfloat16' (ml_dtypes.bfloat16 arrays).
    allow_unknown: instead of refusing a global that is not a tensor/container type, put an inert placeholder
      (`_Opaque`, nothing is called) in its place - for checkpoints that also pickle e.g. argparse.Namespace.
  Returns:
    the saved object with every tensor as a C-contiguous numpy array (dicts, OrderedDicts, lists, tuples kept).
  Raises:
    CheckpointError: not a torch file, truncated/corrupt, or a refused global (one line, names the file).
  """
  path = os.fspath(path)
  if bf16 not in ("float32", "bfloat16"):
    raise ValueError(f"bf16 must be 'float32' or 'bfloat16', not {bf16!r}")
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such file")
  with open(path, "rb") as f:
    head = f.read(4)
  if not head:
    raise CheckpointError(f"{path}: empty file (not a PyTorch checkpoint)")
  try:
    if head.startswith(b"PK"):
      try:
        with zipfile.ZipFile(path) as zf:
          return _load_zip(path, zf, bf16, allow_unknown)
      except zipfile.BadZipFile as e:
        raise CheckpointError(f"{path}: truncated or corrupt zip checkpoint ({e})") from None
    if head[0] != 0x80:
      what = "gzip data" if head.startswith(b"\x1f\x8b") else f"starts with {head!r}"
      raise CheckpointError(f"{path}: not a PyTorch checkpoint ({what}; expected a zip archive or a pickle)")
    with open(path, "rb") as f:
      return _load_legacy(path, f, bf16, allow_unknown)
  except CheckpointError:
    raise
  except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, struct.error, ValueError, KeyError, TypeError,
          IndexError, AttributeError, OSError, UnicodeDecodeError, MemoryError) as e:
    msg = str(e).splitlines()[0] if str(e) else ""
    if isinstance(e, EOFError) or "truncated" in msg or "ran out of input" in msg.lower():
      raise CheckpointError(f"{path}: truncated file ({type(e).__name__}{': ' + msg if msg else ''})") from None
    raise CheckpointError(f"{path}: corrupt PyTorch checkpoint ({type(e).__name__}: {msg})") from None


# ----------------------------------------------------------------------------------------------------------------
# State-dict extraction.


def _is_flat_state_dict(d) -> bool:
  return isinstance(d, Mapping) and len(d) > 0 and all(
      isinstance(k, str) and isinstance(v, (np.ndarray, np.generic)) for k, v in d.items())


def _strip(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for k, v in sd.items():
    nk = k
    while nk.startswith("module.") or nk.startswith("_orig_mod."):
      nk = nk.split(".", 1)[1]
    nk = nk.replace("._orig_mod.", ".")
    if nk in out:
      raise CheckpointError(f"stripping wrapper prefixes maps two keys to {nk!r}")
    out[nk] = v
  return out


def extract_state_dict(obj: Any, key: str | None = None, *, strip_prefixes: bool = True,
                       where: str = "checkpoint") -> dict[str, np.ndarray]:
  """Find the model state dict `{torch key: np.ndarray}` inside a loaded checkpoint.

  Accepted shapes: a flat state dict; ``{'state_dict': flat}`` (Lightning); ``{'state_dict': {model_name: flat}}``
  (the official ``model_ckpt_steps_*.ckpt``; `key` names the model, optional when there is only one);
  ``{'model': flat}``. With `key` and a flat dict, the entries under ``key + '.'`` are taken (prefix removed).
  `strip_prefixes` removes DataParallel ``module.`` and torch.compile ``_orig_mod.`` wrapper prefixes.
  """
  def done(sd):
    return _strip(sd) if strip_prefixes else dict(sd)

  def pick(d, label):
    if key is None:
      return None
    if key in d and _is_flat_state_dict(d[key]):
      return done(d[key])
    if key in d and isinstance(d[key], Mapping):
      return extract_state_dict(d[key], None, strip_prefixes=strip_prefixes, where=f"{label}[{key!r}]")
    sub = {k[len(key) + 1:]: v for k, v in d.items() if isinstance(k, str) and k.startswith(key + ".")}
    if sub and _is_flat_state_dict(sub):
      return done(sub)
    names = [k for k in d if isinstance(k, str)]
    raise CheckpointError(f"{where}: no model {key!r} in {label} (has: {', '.join(names[:12])}"
                          f"{' ...' if len(names) > 12 else ''})")

  if not isinstance(obj, Mapping):
    raise CheckpointError(f"{where}: a {type(obj).__name__}, not a dict of tensors")
  if _is_flat_state_dict(obj):
    return pick(obj, where) if key is not None else done(obj)
  for container in ("state_dict", "model", "module", "params"):
    if container in obj and isinstance(obj[container], Mapping):
      inner = obj[container]
      label = f"{where}[{container!r}]"
      if _is_flat_state_dict(inner):
        return pick(inner, label) if key is not None else done(inner)
      models = {k: v for k, v in inner.items() if _is_flat_state_dict(v)}
      if key is not None:
        return pick(inner, label)
      if len(models) == 1:
        return done(next(iter(models.values())))
      raise CheckpointError(f"{where}: {label} holds {len(models)} models ({', '.join(map(str, models))}); "
                            f"name one with key=")
  if key is not None and key in obj:
    return pick(obj, where)
  raise CheckpointError(f"{where}: no state dict found (top-level keys: "
                        f"{', '.join(str(k) for k in list(obj)[:12])})")


# ----------------------------------------------------------------------------------------------------------------
# Writer (zip format), for tests and for building official-format files without torch.

_NP_TO_STORAGE = {np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
                  np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage",
                  np.dtype("int32"): "IntStorage", np.dtype("int16"): "ShortStorage", np.dtype("int8"): "CharStorage",
                  np.dtype("uint8"): "ByteStorage", np.dtype("bool"): "BoolStorage",
                  np.dtype("complex64"): "ComplexFloatStorage", np.dtype("complex128"): "ComplexDoubleStorage"}


def _storage_name(dtype: np.dtype) -> str:
  if dtype.name == "bfloat16":
    return "BFloat16Storage"
  d = dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype
  if d not in _NP_TO_STORAGE:
    raise TypeError(f"no torch storage for numpy dtype {dtype}")
  return _NP_TO_STORAGE[d]


class _PickleWriter:
  """Emits protocol-2 pickle opcodes for plain containers and numpy arrays (as torch tensors)."""

  def __init__(self, legacy: bool = False):
    self.legacy = legacy
    self.out = io.BytesIO()
    self.storages: list[tuple[str, np.ndarray]] = []  # (key, contiguous root array)
    self._keys: dict[int, tuple[str, np.ndarray]] = {}

  def w(self, b: bytes):
    self.out.write(b)

  def glob(self, module: str, name: str):
    self.w(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

  def tuple_(self, items):
    self.w(b"(")
    for it in items:
      self.save(it)
    self.w(b"t")

  def save(self, obj):
    if obj is None:
      self.w(b"N")
    elif obj is True or obj is False or isinstance(obj, np.bool_):
      self.w(b"\x88" if obj else b"\x89")
    elif isinstance(obj, (int, np.integer)):
      v = int(obj)
      if -2 ** 31 <= v < 2 ** 31:
        self.w(b"J" + struct.pack("<i", v))
      else:
        enc = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
        self.w(b"\x8a" + bytes([len(enc)]) + enc)
    elif isinstance(obj, (float, np.floating)) and not isinstance(obj, np.ndarray):
      self.w(b"G" + struct.pack(">d", float(obj)))
    elif isinstance(obj, str):
      b = obj.encode("utf-8")
      self.w(b"X" + struct.pack("<I", len(b)) + b)
    elif isinstance(obj, bytes):
      self.w(b"B" + struct.pack("<I", len(obj)) + obj)
    elif isinstance(obj, np.ndarray):
      self.tensor(obj)
    elif isinstance(obj, collections.OrderedDict):
      self.glob("collections", "OrderedDict")
      self.w(b")R")
      self.items(obj)
    elif isinstance(obj, dict):
      self.w(b"}")
      self.items(obj)
    elif isinstance(obj, list):
      self.w(b"](")
      for v in obj:
        self.save(v)
      self.w(b"e")
    elif isinstance(obj, tuple):
      self.tuple_(obj)
    else:
      raise TypeError(f"save_torch_checkpoint: cannot write a {type(obj).__name__}")

  def items(self, d):
    if d:
      self.w(b"(")
      for k, v in d.items():
        self.save(k)
        self.save(v)
      self.w(b"u")

  def tensor(self, a: np.ndarray):
    # Keep views as views: a numpy view of a C-contiguous base becomes (shared storage, offset, strides).
    root = a
    while isinstance(root.base, np.ndarray):
      root = root.base
    isz = a.dtype.itemsize
    offset, strides = 0, None
    if (root is not a and root.flags.c_contiguous and root.dtype == a.dtype and a.size > 0
        and all(s >= 0 and s % isz == 0 for s in a.strides)):
      delta = a.__array_interface__["data"][0] - root.__array_interface__["data"][0]
      if delta >= 0 and delta % isz == 0:
        offset, strides = delta // isz, tuple(s // isz for s in a.strides)
    if strides is None:
      root = np.ascontiguousarray(a)
      strides = tuple(int(np.prod(a.shape[i + 1:], dtype=np.int64)) for i in range(a.ndim))
      entry = None
    else:
      entry = self._keys.get(id(root))
    if entry is None:
      entry = (str(len(self.storages)), root)
      self.storages.append(entry)
      self._keys[id(root)] = entry
    key, root = entry
    sname = _storage_name(a.dtype)
    self.glob("torch._utils", "_rebuild_tensor_v2")
    self.w(b"(")
    # persistent id ('storage', torch.<X>Storage, key, location, numel)
    self.w(b"(")
    self.save("storage")
    self.glob("torch", sname)
    self.save(key)
    self.save("cpu")
    self.save(int(root.size))
    if self.legacy:
      self.save(None)  # view_metadata
    self.w(b"tQ")
    self.save(int(offset))
    self.tuple_(tuple(int(s) for s in a.shape))
    self.tuple_(strides)
    self.save(False)
    self.glob("collections", "OrderedDict")
    self.w(b")R")
    self.w(b"tR")


def save_torch_checkpoint(obj: Any, path: str | os.PathLike, *, root: str = "archive", legacy: bool = False) -> None:
  """Write `obj` (dicts/OrderedDicts/lists/tuples of numpy arrays and scalars) as torch's zip format, readable by
  ``torch.load(..., weights_only=True)`` and by `load_torch_checkpoint`. Arrays become tensors (numpy views of
  a C-contiguous base keep their shared storage, offset and strides; ml_dtypes.bfloat16 arrays become bfloat16).
  The file is written to a temporary name and renamed, so a failed write leaves nothing behind.
  `legacy=True` writes the pre-1.6 non-zip format instead (for tests of old public weight files)."""
  path = os.fspath(path)
  pw = _PickleWriter(legacy)
  pw.w(b"\x80\x02")
  pw.save(obj)
  pw.w(b".")
  if legacy:
    _write_legacy(path, pw)
    return
  records = [("data.pkl", pw.out.getvalue()), ("byteorder", b"little")]
  for key, arr in pw.storages:
    a = np.ascontiguousarray(arr)
    if a.dtype.byteorder == ">":
      a = a.astype(a.dtype.newbyteorder("<"))
    records.append((f"data/{key}", a.tobytes()))
  records.append(("version", b"3\n"))
  tmp = path + ".tmp"
  try:
    with open(tmp, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
      for name, data in records:
        zi = zipfile.ZipInfo(f"{root}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
        zi.compress_type = zipfile.ZIP_STORED
        # pad the local header's extra field so each record's data starts 64-byte aligned, as torch does
        hdr = 30 + len(zi.filename.encode()) + 4
        pad = (-(f.tell() + hdr)) % 64
        zi.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        zf.writestr(zi, data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _write_legacy(path: str, pw: "_PickleWriter") -> None:
  def pk(o):
    return pickle.dumps(o, protocol=2)
  parts = [pk(_LEGACY_MAGIC), pk(_LEGACY_PROTOCOL),
           pk({"protocol_version": _LEGACY_PROTOCOL, "little_endian": True,
               "type_sizes": {"short": 2, "int": 4, "long": 4}}),
           pw.out.getvalue(), pk([k for k, _ in pw.storages])]
  for _, arr in pw.storages:
    a = np.ascontiguousarray(arr)
    if a.dtype.byteorder == ">":
      a = a.astype(a.dtype.newbyteorder("<"))
    parts.append(struct.pack("<q", a.size) + a.tobytes())
  tmp = path + ".tmp"
  try:
    with open(tmp, "wb") as f:
      for p in parts:
        f.write(p)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def main(argv=None) -> int:
  import argparse
  ap = argparse.ArgumentParser(prog="python -m r3p.convert.torch_ckpt",
                               description="List the tensors of a PyTorch checkpoint without torch.")
  ap.add_argument("path")
  ap.add_argument("--key", default=None, help="model name inside checkpoint['state_dict']")
  args = ap.parse_args(argv)
  try:
    sd = extract_state_dict(load_torch_checkpoint(args.path, allow_unknown=True), args.key, where=args.path)
  except CheckpointError as e:
    raise SystemExit(f"error: {e}")
  for k, v in sd.items():
    print(f"{k}\t{v.dtype}\t{tuple(v.shape)}")
  print(f"{len(sd)} tensors, {sum(int(v.size) for v in sd.values())} values")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
