"""Reader of the official-network parity fixture format (kind `r3p_model`): inputs, recorded random draws,
outputs and module-boundary records (`modules.npz` + the index in `case.json`).

Records are named `<state_dict prefix>[#call]/in<N>|out<N>[.<key>]`; a record is stored whole or restricted
("probed") to index vectors along some axes (`case.json["modules"][name]["sel"]`); an `alias` record points at
another record or at an input/output. All tensors are torch layout (NCHW) float32. Helpers here convert r3p
tensors (NHWC) to the record's layout and probe them the same way, so components can be compared exactly.
"""
from __future__ import annotations

import functools
import json
import os

import numpy as np


class FixtureCase:
  """One case folder. Lazy: npz files are opened on first use."""

  def __init__(self, case_dir: str):
    self.dir = case_dir
    with open(os.path.join(case_dir, "fixture.json")) as f:
      self.meta = json.load(f)
    p = os.path.join(case_dir, "case.json")
    self.case = json.load(open(p)) if os.path.exists(p) else {}
    self.name = self.meta.get("case", os.path.basename(os.path.normpath(case_dir)))

  def _npz(self, fname):
    p = os.path.join(self.dir, fname)
    if not os.path.exists(p):
      return {}
    return np.load(p)

  @functools.cached_property
  def inputs(self):
    return self._npz("inputs.npz")

  @functools.cached_property
  def outputs(self):
    return self._npz("outputs.npz")

  @functools.cached_property
  def rng(self):
    return self._npz("rng.npz")

  @functools.cached_property
  def modules(self):
    return self._npz("modules.npz")

  @property
  def index(self) -> dict:
    return self.case.get("modules", {})

  def has(self, name: str) -> bool:
    return name in self.index

  def names(self, prefix: str = "") -> list[str]:
    return [n for n in self.index if n.startswith(prefix)]

  def probe_index(self, name: str) -> np.ndarray:
    return np.asarray(self.case["probe_index"][name])

  def probe(self, full: np.ndarray, name: str) -> np.ndarray:
    """Restrict a full tensor (torch layout) the way record `name` is stored."""
    full = np.asarray(full)
    sel = self.index[name].get("sel", {})
    for ax, idx_name in sorted(sel.items(), key=lambda kv: int(kv[0])):
      full = np.take(full, self.probe_index(idx_name), axis=int(ax))
    return full

  def record(self, name: str) -> np.ndarray:
    """The stored (possibly probed) array of a record, resolving aliases."""
    info = self.index[name]
    alias = info.get("alias")
    if alias:
      src, _, key = alias.partition(":")
      if src == "inputs":
        return self.probe(self.inputs[key], name)
      if src == "outputs":
        return self.probe(self.outputs[key], name)
      if src == "modules":
        if info.get("sel", {}) == self.index[key].get("sel", {}):
          return self.record(key)
        raise ValueError(f"{name}: alias {key} stored with another selection")
      raise ValueError(f"{name}: unknown alias {alias!r}")
    return np.asarray(self.modules[name])

  def is_whole(self, name: str) -> bool:
    return not self.index[name].get("sel")

  def compare(self, mine_torch_layout, name: str) -> tuple[float, float]:
    """(max|Δ|, max|Δ| / max|ref|) of my full tensor (torch layout) against record `name`."""
    ref = self.record(name).astype(np.float64)
    mine = self.probe(np.asarray(mine_torch_layout, np.float64), name)
    if mine.shape != ref.shape:
      raise ValueError(f"{name}: shape {mine.shape} vs stored {ref.shape}")
    d = float(np.abs(mine - ref).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return d, d / max(scale, 1e-30)


def nchw_to_nhwc(x):
  x = np.asarray(x)
  return np.moveaxis(x, 1, -1)


def nhwc_to_nchw(x):
  x = np.asarray(x)
  return np.moveaxis(x, -1, 1)
