"""Orbax wrapper: state + data-iterator state round trip, restore onto a different mesh shape, keep-N."""
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from r3p import parallel
from r3p.checkpoint import Checkpointer


def _state(mesh):
  w = jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6)
  return {"step": jnp.int32(7), "params": {"w": jax.device_put(w, NamedSharding(mesh, P("fsdp", None)))},
          "lambdas": {"blink": jnp.float32(0.25)}}


def test_roundtrip_onto_another_mesh(tmp_path):
  mesh_a = parallel.make_mesh({"data": 4, "fsdp": 2})
  ck = Checkpointer(str(tmp_path / "ckpt"), keep=2, save_every=1, async_save=False)
  st = _state(mesh_a)
  for s in (1, 2, 3):
    ck.save(s, st, {"next_index": 10 * s}, force=True)
  ck.wait()
  assert sorted(int(d) for d in os.listdir(tmp_path / "ckpt") if d.isdigit()) == [2, 3]  # keep-N
  mesh_b = parallel.make_mesh({"data": 1, "fsdp": 8})
  target = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh_b, P())),
            "params": {"w": jax.ShapeDtypeStruct((8, 6), jnp.float32, sharding=NamedSharding(mesh_b, P("fsdp")))},
            "lambdas": {"blink": jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh_b, P()))}}
  got, data = Checkpointer(str(tmp_path / "ckpt")).restore(target)
  assert data == {"next_index": 30}
  np.testing.assert_array_equal(np.asarray(got["params"]["w"]), np.asarray(st["params"]["w"]))
  assert got["params"]["w"].sharding.spec == P("fsdp") and got["params"]["w"].sharding.mesh.shape["fsdp"] == 8
  assert int(got["step"]) == 7 and float(got["lambdas"]["blink"]) == 0.25
  ck.close()
