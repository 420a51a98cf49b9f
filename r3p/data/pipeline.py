"""Grain input pipeline: per-process sharding, deterministic shuffling, checkpointable iterator state.

    source (random access) -> shuffle(seed) per epoch -> repeat -> this process's slice -> batch (drop remainder)

The iterator's `get_state()` is a small JSON-able dict saved with every checkpoint (`r3p.checkpoint`), so a
resumed run sees exactly the batches an uninterrupted one would (data order included). A record that fails to
decode raises `RecordError` naming its index; nothing is silently skipped.
"""
from __future__ import annotations

from typing import Any

import grain
import jax
import numpy as np


class RecordError(RuntimeError):
  pass


class _Checked:
  """Wrap a source so that any failure names the record."""

  def __init__(self, source, name: str):
    self.source, self.name = source, name

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    try:
      item = self.source[i]
    except Exception as e:  # noqa: BLE001 (re-raised with the record named)
      raise RecordError(f"{self.name}: record {i} is unreadable: {type(e).__name__}: {e}") from e
    for k, v in item.items():
      if not np.all(np.isfinite(np.asarray(v, np.float64))):
        raise RecordError(f"{self.name}: record {i} field {k!r} holds NaN/Inf")
    return item


def make_dataset(source, *, global_batch: int, seed: int, process_index: int | None = None,
                 process_count: int | None = None, name: str = "dataset") -> grain.IterDataset:
  """Batches of `global_batch // process_count` items for this process, in a seed-determined order."""
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if global_batch % pc:
    raise ValueError(f"global batch {global_batch} does not divide by {pc} processes")
  ds = grain.MapDataset.source(_Checked(source, name)).shuffle(seed=seed).repeat(None)
  # Every process walks the same global order and takes its own contiguous part of each global batch, so the
  # global batch is identical for any process count (1×8 devices == 2×4 devices).
  local = global_batch // pc
  ds = ds.batch(global_batch, drop_remainder=True)
  ds = ds.map(lambda b: {k: v[pi * local:(pi + 1) * local] for k, v in b.items()})
  return ds.to_iter_dataset()


def get_state(it) -> dict[str, Any]:
  return it.get_state()


def set_state(it, state: dict[str, Any]) -> None:
  it.set_state(state)
