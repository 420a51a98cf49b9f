"""Device mesh, the one logical-axis rules table, and sharding helpers for training (STYLE.md §9.4).

Mesh axes are ('data', 'fsdp'), sized from the config (`-1` = fill with the remaining devices), created with
explicit `AxisType.Auto` (GSPMD propagation + our constraints). Params carry *logical* axis names in their
`out_sharding` metadata (`r3p.nn.layers.param(value, layout, names)`); `LOGICAL_RULES` maps each logical name to
mesh axes. A mesh axis is dropped from a dimension it does not divide (e.g. a 3-channel conv on fsdp=2), so any
model size shards without per-parameter code; `param_shardings_json` dumps the result for the golden test.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch is split over every device (FSDP shards params *and* the batch)

# logical name -> mesh axis / axes (None = replicated). The only table; configs may override it as a whole.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),   # input-feature dim of convs / linears: ZeRO-3 style param sharding
    ("mlp", None),       # output-feature dim (a 'model' axis would go here)
    ("heads", None),
    ("height", None),
    ("width", None),
    ("channels", None),
    ("ray", None),
)


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Mesh ('data','fsdp') from {axis: size}; one size may be -1 (fill). Raises on a size that does not fit."""
  devices = list(jax.devices() if devices is None else devices)
  shape = dict(shape or {"data": -1, "fsdp": 1})
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected {MESH_AXES}")
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  n = len(devices)
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {shape}")
  if -1 in sizes:
    rest = int(np.prod([s for s in sizes if s != -1]))
    if n % rest:
      raise ValueError(f"{n} devices do not divide by the fixed mesh axes {shape}")
    sizes[sizes.index(-1)] = n // rest
  if int(np.prod(sizes)) != n:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, have {n}")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int] | None = None,
                    mesh: jax.sharding.Mesh | None = None, rules=LOGICAL_RULES) -> P:
  """Logical names -> PartitionSpec. With `shape` and `mesh`, mesh axes that do not divide a dim are dropped."""
  if names is None:
    return P()
  table = dict(rules)
  used: set[str] = set()
  out = []
  for i, name in enumerate(names):
    axes = table.get(name) if name is not None else None
    if name is not None and name not in table:
      raise KeyError(f"logical axis {name!r} has no rule in LOGICAL_RULES")
    if axes is None:
      out.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    keep = []
    size = 1
    for a in axes:
      if a in used:
        continue
      n = mesh.shape[a] if mesh is not None else 1
      if shape is not None and mesh is not None and shape[i] % (size * n):
        continue
      keep.append(a)
      size *= n
    used.update(keep)
    out.append(None if not keep else (keep[0] if len(keep) == 1 else tuple(keep)))
  return P(*out)


def _var_names(var) -> tuple | None:
  meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
  return meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")


def state_shardings(state, mesh: jax.sharding.Mesh, rules=LOGICAL_RULES):
  """NamedShardings for an nnx.State (abstract or concrete) from its variables' logical names."""
  def one(var):
    value = var.get_value() if hasattr(var, "get_value") else var
    names = _var_names(var) if isinstance(var, nnx.Variable) else None
    if names is not None and len(names) != len(value.shape):
      names = None
    return NamedSharding(mesh, logical_to_spec(names, value.shape, mesh, rules))
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 1) -> NamedSharding:
  """Leading dim split over ('data','fsdp'); other dims replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def check_batch(global_batch: int, mesh: jax.sharding.Mesh) -> None:
  n = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
  if global_batch % n:
    raise ValueError(f"global batch {global_batch} does not divide by the {n} devices of mesh {dict(mesh.shape)}")


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Process-local numpy batch -> global jax arrays split over ('data','fsdp') (multi-host safe)."""
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
  return out


def constrain(x: jax.Array, names: Sequence[str | None], mesh: jax.sharding.Mesh | None = None,
              rules=LOGICAL_RULES) -> jax.Array:
  """with_sharding_constraint by logical names (no-op without a mesh, e.g. in plain inference)."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, x.shape, mesh, rules)))


def shard_map_over_batch(fn, mesh: jax.sharding.Mesh, n_in: int, n_out: int = 1):
  """`jax.shard_map` of a per-shard function whose inputs/outputs are all batch-leading."""
  spec = P(BATCH_AXES)
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * n_in,
                       out_specs=spec if n_out == 1 else (spec,) * n_out)


def param_shardings_json(shardings) -> str:
  """{'path': 'PartitionSpec(...)'} of a sharding tree, sorted, as JSON (golden files)."""
  flat = jax.tree_util.tree_leaves_with_path(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  d = {jax.tree_util.keystr(p, simple=True, separator="."): str(tuple(s.spec)) for p, s in flat}
  return json.dumps(dict(sorted(d.items())), indent=1)


def global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))
