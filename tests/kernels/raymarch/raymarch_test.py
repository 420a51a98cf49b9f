"""Fused ray-march op: Pallas kernel (interpret mode on CPU) and XLA path vs `ray_march_reference`.

One shared base (`RayMarchTestBase`) parameterised over shapes and dtypes; subclasses pin the implementation.
Covers odd ray counts (not a multiple of the block), rays outside the box (zero features -> sigma from the
bias only, and rays whose samples are all outside), all-zero density (huge negative raw sigma) and the VJP
(custom_vjp backward vs jax.grad of the reference).
Tolerances: fp32 forward 1e-5 abs on rgb/weights (values O(1)) and 1e-5 relative on depth; fp32 grads 1e-4
relative to max|grad|; bf16 (same-dtype reference) 2e-2 abs.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r3p.kernels.raymarch import api, base, pallas_triton
from r3p.models.decoder import OSGDecoder

TOL = {jnp.float32: dict(fwd=1e-5, grad=1e-4), jnp.bfloat16: dict(fwd=2e-2, grad=5e-2)}
# Few distinct shapes: every (shape, dtype) compiles the interpreted kernel once (seconds each on CPU).
SHAPES = [(2, 37, 9), (1, 19, 48)]   # odd ray counts (ragged last block of 16), coarse-like 48 samples
_reference = jax.jit(base.ray_march_reference, static_argnames=("box_warp", "dtype", "chunk_rays"))


@functools.cache
def _decoder_params(seed):
  return OSGDecoder(rngs=nnx.Rngs(seed)).mlp_params()


def make_inputs(b, n, s, *, h=16, w=16, seed=0, outside=False, zero_density=False):
  ks = jax.random.split(jax.random.key(seed), 6)
  planes = jax.random.normal(ks[0], (b, 3, h, w, 32), jnp.float32)
  params = _decoder_params(seed)
  if zero_density:  # raw sigma -> -1e4 everywhere: softplus(-1e4 - 1) = 0, all weights 0
    params = dict(params, b1=params["b1"].at[0].set(-1e4))
  origins = jnp.broadcast_to(jnp.array([0.0, 0.0, 2.0]), (b, n, 3))
  d = jax.random.normal(ks[1], (b, n, 3)) * 0.15 + jnp.array([0.0, 0.0, -1.0])
  if outside:  # half the rays point away from the box
    d = d.at[:, ::2, 2].multiply(-1.0)
  d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
  z = jnp.sort(jax.random.uniform(ks[2], (b, n, s), minval=1.3, maxval=2.7), axis=-1)
  return planes, params, origins, d, z


class RayMarchTestBase:
  IMPLEMENTATION = None
  INTERPRET = None
  CONFIG = None
  CHECK_VJP = True

  def run(self, *args, dtype=jnp.float32):
    return api.ray_march(*args, implementation=self.IMPLEMENTATION, dtype=dtype, interpret=self.INTERPRET,
                         config=self.CONFIG)

  @pytest.mark.parametrize("b,n,s,dtype", [SHAPES[0] + (jnp.float32,), SHAPES[1] + (jnp.float32,),
                                           SHAPES[0] + (jnp.bfloat16,)])
  def test_forward(self, b, n, s, dtype):
    args = make_inputs(b, n, s, outside=True)
    got = jax.jit(functools.partial(self.run, dtype=dtype))(*args)
    want = _reference(*args, dtype=dtype)
    tol = TOL[dtype]["fwd"]
    for g, r, name in zip(got, want, ("rgb", "depth", "weights")):
      assert g.shape == r.shape, name
      assert g.dtype == jnp.float32, name
      np.testing.assert_array_equal(np.isfinite(g), np.isfinite(r), err_msg=name)
      fin = np.isfinite(np.asarray(r))
      scale = float(np.abs(np.asarray(r)[fin]).max()) if name == "depth" else 1.0
      np.testing.assert_allclose(np.asarray(g)[fin], np.asarray(r)[fin], atol=tol * scale, rtol=0, err_msg=name)
    if dtype == jnp.bfloat16:  # bf16 features/MLP stay close to the fp32 reference
      ref32 = _reference(*args)
      assert float(jnp.abs(got[0] - ref32[0]).max()) < 0.1

  def test_all_zero_density(self):
    args = make_inputs(*SHAPES[0], zero_density=True)
    rgb, depth, w = jax.jit(self.run)(*args)
    assert float(jnp.abs(w).max()) == 0.0
    np.testing.assert_allclose(rgb, -1.0)           # Σ w·c = 0 -> ×2 − 1
    assert bool(jnp.all(jnp.isposinf(depth)))       # 0/0 -> official nan_to_num(nan=inf), clamped later

  def test_vjp_matches_reference(self):
    if not self.CHECK_VJP:
      pytest.skip("this backend's VJP is jax.grad of the reference itself")
    b, n, s = SHAPES[0]
    args = make_inputs(b, n, s, outside=True)
    g_rgb = jax.random.normal(jax.random.key(7), (b, n, 32))
    g_w = jax.random.normal(jax.random.key(8), (b, n, s - 1))

    def loss(fn, planes, params):
      rgb, depth, w = fn(planes, params, *args[2:])
      dep = jnp.where(jnp.isfinite(depth), depth, 0.0)
      return jnp.sum(rgb * g_rgb) + jnp.sum(w * g_w) + jnp.sum(dep)

    mine = jax.jit(jax.grad(functools.partial(loss, self.run), argnums=(0, 1)))(*args[:2])
    ref = jax.jit(jax.grad(functools.partial(loss, base.ray_march_reference), argnums=(0, 1)))(*args[:2])
    for g, r in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
      assert bool(jnp.all(jnp.isfinite(g)))
      scale = float(jnp.abs(r).max()) + 1e-12
      assert float(jnp.abs(g - r).max()) <= TOL[jnp.float32]["grad"] * scale


class TestPallasInterpret(RayMarchTestBase):
  IMPLEMENTATION = "pallas"
  INTERPRET = True
  CONFIG = pallas_triton.Config(block_rays=16)   # several blocks + a ragged last one for n = 37, 19


class TestXla(RayMarchTestBase):
  """The XLA backend is the reference itself (chunked here, to exercise the chunking path)."""
  IMPLEMENTATION = "xla"
  CHECK_VJP = False

  def run(self, *args, dtype=jnp.float32):
    return api.ray_march(*args, implementation="xla", dtype=dtype, chunk_rays=16)


def test_auto_implementation_falls_back_to_xla_on_cpu():
  assert api.resolve_implementation(None, jax.devices("cpu")[0]) == "xla"
  assert not pallas_triton.supported_on(jax.devices("cpu")[0])
  with pytest.raises(ValueError, match="implementation"):
    api.resolve_implementation("cuda")


def test_config_errors_name_values():
  with pytest.raises(ValueError, match="block_rays"):
    pallas_triton.Config(block_rays=24)


def test_shard_map_over_rays():
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake CPU) devices")
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  args = make_inputs(2, 64, 9, outside=True)
  want = _reference(*args)
  for impl in ("pallas",):
    got = jax.jit(functools.partial(api.ray_march_sharded, mesh=mesh, axis="data", implementation=impl,
                                    interpret=True, config=pallas_triton.Config(block_rays=16)))(*args)
    for g, r in zip(got, want):
      fin = np.isfinite(np.asarray(r))
      np.testing.assert_array_equal(np.isfinite(g), fin)
      np.testing.assert_allclose(np.asarray(g)[fin], np.asarray(r)[fin], atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="multiple"):
    api.ray_march_sharded(*make_inputs(1, 12, 9), mesh=mesh, axis="data")
