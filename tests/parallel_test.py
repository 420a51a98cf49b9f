import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from r3p import parallel


def test_make_mesh_fill_and_errors():
  mesh = parallel.make_mesh({"data": -1, "fsdp": 2})
  assert dict(mesh.shape) == {"data": len(jax.devices()) // 2, "fsdp": 2}
  with pytest.raises(ValueError, match="needs"):
    parallel.make_mesh({"data": 3, "fsdp": 2})
  with pytest.raises(ValueError, match="unknown mesh axes"):
    parallel.make_mesh({"model": 2})


def test_logical_to_spec_drops_non_dividing_axes():
  mesh = parallel.make_mesh({"data": 4, "fsdp": 2})
  assert parallel.logical_to_spec(("embed", "mlp"), (8, 3), mesh) == P("fsdp", None)
  assert parallel.logical_to_spec(("embed", "mlp"), (3, 8), mesh) == P(None, None)
  assert parallel.logical_to_spec(("batch", None), (8, 5), mesh) == P(("data", "fsdp"), None)
  assert parallel.logical_to_spec(("batch",), (4,), mesh) == P("data")
  with pytest.raises(KeyError, match="no rule"):
    parallel.logical_to_spec(("nope",), (4,), mesh)


def test_shard_batch_and_check():
  mesh = parallel.make_mesh({"data": 4, "fsdp": 2})
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  g = parallel.shard_batch({"x": x}, mesh)["x"]
  np.testing.assert_array_equal(np.asarray(g), x)
  assert len(g.addressable_shards) == 8 and g.addressable_shards[0].data.shape == (2, 3)
  with pytest.raises(ValueError, match="does not divide"):
    parallel.check_batch(6, mesh)


def test_constrain_noop_without_mesh():
  x = jax.numpy.ones((4, 2))
  assert parallel.constrain(x, ("batch", None)) is x
