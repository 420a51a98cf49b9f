"""Reading the array_record clip dataset (`r3p.data.tfds_clips`) as Grain random-access sources, without TensorFlow.

`FrameRecords(path)`: frame records, each checked (decodable, expected keys/shapes, finite) — a bad or truncated
record raises `RecordError` naming the shard file and the record index inside it; nothing is skipped.
`ArrayRecordPairs(path, n_items, seed, torso)`: (ref, tgt) frame pairs of one clip per item, with the keys of
`r3p.data.synthetic.SyntheticTalkingHeads` (so every stage trains on either source).
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import os

import numpy as np

from r3p.data.pipeline import RecordError
from r3p.data.tfds_clips import N_KP, from_uint8

_IMAGES = ("image", "head_img", "torso_img", "bg_img", "secc", "cano_secc")


def find_dataset_dir(path: str) -> str:
  """`path` itself when it holds dataset_info.json, else the one dataset version directory below it."""
  path = os.path.expanduser(path)
  if os.path.isfile(os.path.join(path, "dataset_info.json")):
    return path
  hits = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(path, "**", "dataset_info.json"), recursive=True))
  if not hits:
    raise FileNotFoundError(f"no TFDS dataset (dataset_info.json) under {path!r}; build one with "
                            "`python -m r3p.data.build --out DIR`")
  if len(hits) > 1:
    raise ValueError(f"{path!r} holds {len(hits)} datasets ({', '.join(hits)}); name one of them")
  return hits[0]


class FrameRecords:
  """Random access to the frame records of a split; `records[i]` -> dict of numpy arrays as stored."""

  def __init__(self, path: str, split: str = "train"):
    import tensorflow_datasets as tfds
    self.path = find_dataset_dir(path)
    self.builder = tfds.builder_from_directory(self.path)
    info = self.builder.info
    if split not in info.splits:
      raise ValueError(f"{self.path}: no split {split!r} (have {sorted(info.splits)})")
    self.split = split
    self.size = int(info.metadata["size"])
    self.clip_lengths = [int(n) for n in info.metadata["clip_lengths"]]
    self.clip_offsets = [int(n) for n in info.metadata["clip_offsets"]]
    shards = info.splits[split].shard_lengths
    self._shard_ends = np.cumsum(shards)
    self._shard_files = [os.path.basename(str(f)) for f in info.splits[split].filenames]
    self._n = int(self._shard_ends[-1]) if len(shards) else 0
    for f in self._shard_files:
      if not os.path.exists(os.path.join(self.path, f)):
        raise RecordError(f"{os.path.join(self.path, f)}: shard file missing")
    self._expected = {k: tuple(v.shape) for k, v in self.builder.info.features.items()}

  @functools.cached_property
  def _source(self):
    return self.builder.as_data_source(split=self.split)

  def __len__(self) -> int:
    return self._n

  def where(self, index: int) -> str:
    """'<shard file>: record <k>' of global record `index`."""
    s = int(np.searchsorted(self._shard_ends, index, side="right"))
    start = int(self._shard_ends[s - 1]) if s else 0
    return f"{os.path.join(self.path, self._shard_files[s])}: record {index - start}"

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < self._n:
      raise IndexError(f"{self.path}: record {index} out of range [0, {self._n})")
    try:
      rec = self._source[index]
    except Exception as e:  # noqa: BLE001 (re-raised naming the record)
      raise RecordError(f"{self.where(index)} is unreadable (truncated or corrupt file?): "
                        f"{type(e).__name__}: {str(e)[:200]}") from e
    for k, shape in self._expected.items():
      v = rec.get(k)
      if v is None or np.shape(v) != shape:
        raise RecordError(f"{self.where(index)}: field {k!r} has shape {np.shape(v)}, expected {shape}")
      if np.asarray(v).dtype.kind == "f" and not np.all(np.isfinite(v)):
        raise RecordError(f"{self.where(index)}: field {k!r} holds NaN/Inf")
    return rec

  def frame(self, clip: int, t: int) -> dict[str, np.ndarray]:
    return self[self.clip_offsets[clip] + t]


@dataclasses.dataclass
class ArrayRecordPairs:
  """(ref, tgt) frame pairs from the clips of an array_record dataset (Grain random-access source).

  Item i: clip i % n_clips, two distinct frames drawn from a numpy Generator seeded by (seed, i); keys and
  layouts as `SyntheticTalkingHeads` (images float32 in [-1,1], masks {0,1} float32), plus the HTB-SR keys with
  torso=True and ref_audio / tgt_audio [2,80] with audio=True.
  """
  path: str
  n_items: int = 1024
  seed: int = 0
  torso: bool = False
  audio: bool = False
  split: str = "train"

  def __post_init__(self):
    self.records = FrameRecords(self.path, self.split)
    self.size = self.records.size
    self.n_clips = len(self.records.clip_lengths)

  def __len__(self) -> int:
    return self.n_items

  def frames_of(self, index: int) -> tuple[int, int, int]:
    if not 0 <= index < self.n_items:
      raise IndexError(f"pair {index} out of range [0, {self.n_items})")
    clip = index % self.n_clips
    n = self.records.clip_lengths[clip]
    r = np.random.default_rng([self.seed, 2, index])
    a, b = (r.choice(n, 2, replace=False) if n > 1 else (0, 0))
    return clip, int(a), int(b)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    clip, a, b = self.frames_of(int(index))
    ref, tgt = self.records.frame(clip, a), self.records.frame(clip, b)
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    out = dict(ref_img=from_uint8(ref["head_img"]), tgt_img=from_uint8(tgt["head_img"]),
               cond_cano=from_uint8(ref["cano_secc"]), cond_src=from_uint8(ref["secc"]),
               cond_tgt=from_uint8(tgt["secc"]), ref_head_mask=f32(ref["head_mask"]),
               tgt_head_mask=f32(tgt["head_mask"]), ref_camera=f32(ref["camera"]), tgt_camera=f32(tgt["camera"]),
               ident=f32(ref["ident"]), ref_expr=f32(ref["expr"]), tgt_expr=f32(tgt["expr"]),
               ref_yaw=f32(ref["yaw"]), tgt_yaw=f32(tgt["yaw"]))
    if self.audio:
      out.update(ref_audio=f32(ref["audio"]), tgt_audio=f32(tgt["audio"]))
    if self.torso:
      seg = ref["segmap"].astype(np.int64)
      if seg.max(initial=0) > 5:
        raise RecordError(f"{self.records.where(self.records.clip_offsets[clip] + a)}: segmap class {seg.max()} > 5")
      tseg = tgt["segmap"]
      out.update(ref_com_img=from_uint8(ref["image"]), tgt_com_img=from_uint8(tgt["image"]),
                 ref_torso_img=from_uint8(ref["torso_img"]), bg_img=from_uint8(ref["bg_img"]),
                 ref_segmap=np.eye(6, dtype=np.float32)[seg],
                 tgt_torso_mask=((tseg == 2) | (tseg == 4)).astype(np.float32)[..., None],
                 ref_kp=f32(ref["kp"]).reshape(N_KP, 3), tgt_kp=f32(tgt["kp"]).reshape(N_KP, 3))
    return out
