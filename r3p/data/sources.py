"""Training data source selection from the config: `make_source(cfg)` -> a Grain random-access source.

`cfg.data.name` (or `cfg.data.source` where a config defines it) picks the data:
  'synthetic'             the embedded procedural set (`SyntheticTalkingHeads`, rendered on the fly at data.size)
  'array_record:DIR'      a dataset written by `python -m r3p.data.build --out DIR` (DIR = the data_dir or the
                          dataset version directory); its image size must equal data.size
`cfg.data.torso` (optional, default False) adds the HTB-SR keys (com/torso/bg images, segmap, torso mask, kp).
"""
from __future__ import annotations

from r3p.data.synthetic import SyntheticTalkingHeads

PREFIX = "array_record:"


def source_spec(cfg) -> str:
  d = cfg.data
  spec = d.get("source", None) or d.name
  return str(spec)


def make_source(cfg):
  d = cfg.data
  spec = source_spec(cfg)
  torso = bool(d.get("torso", False))
  if spec == "synthetic":
    return SyntheticTalkingHeads(size=d.size, n_clips=d.n_clips, n_items=d.n_items, seed=cfg.seed, torso=torso)
  if spec.startswith(PREFIX):
    from r3p.data.records import ArrayRecordPairs
    src = ArrayRecordPairs(spec[len(PREFIX):], n_items=d.n_items, seed=cfg.seed, torso=torso)
    if src.size != d.size:
      raise ValueError(f"dataset {src.records.path} has {src.size}² frames but data.size = {d.size}; rebuild "
                       f"with --size {d.size} or set --config.data.size={src.size}")
    return src
  raise ValueError(f"unknown data source {spec!r}; expected 'synthetic' or '{PREFIX}DIR'")
