"""Shared config pieces: `parse_arg`, the base training config, durations (STYLE.md §9.3)."""
from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'tiny' or 'variant=tiny,ablation=x' -> ConfigDict over `defaults` (first bare word = variant)."""
  out = dict(defaults)
  for i, part in enumerate(p for p in (arg or "").split(",") if p):
    if "=" in part:
      k, v = part.split("=", 1)
    elif i == 0:
      k, v = "variant", part
    else:
      raise ValueError(f"config arg part {part!r} must be key=value")
    if k not in out:
      raise ValueError(f"unknown config arg {k!r}; known: {sorted(out)}")
    out[k] = type(out[k])(v) if out[k] is not None and not isinstance(out[k], bool) else (
        v.lower() in ("1", "true", "yes") if isinstance(out[k], bool) else v)
  return ml_collections.ConfigDict(out)


def apply_overrides(c: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
  """Set {'dotted.path': value} entries on `c` (ablations, tests); an unknown path raises KeyError."""
  for k, v in dict(overrides).items():
    *parents, leaf = k.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 200
  c.log_every = 10
  c.ckpt_every = 50
  c.keep = 3
  c.keep_period = 0          # 0: no milestone checkpoints
  c.async_checkpointing = True
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  c.progress = True
  c.stop_after = -1          # testing aid: exit (no final save) after this many steps in this process
  c.resume = ""              # another workdir's checkpoints to start from (after our own workdir)
  return c
