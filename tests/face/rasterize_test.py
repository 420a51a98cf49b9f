"""Tests of the tiled JAX rasterizer against a brute-force NumPy reference, plus properties and sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from r3p.face import rasterize as R

H, W = 40, 48


def _random_mesh(seed, nv=60, nf=50, small=False):
  rs = np.random.RandomState(seed)
  if small:  # many tiny triangles (the "small" binning path) plus a few large ones
    c = np.stack([rs.uniform(-3, W + 3, nf), rs.uniform(-3, H + 3, nf)], 1)
    v = np.concatenate([c[:, None] + rs.uniform(-4, 4, (nf, 3, 2)), rs.uniform(5, 15, (nf, 3, 1))], -1)
    v = v.reshape(-1, 3)
    f = np.arange(3 * nf).reshape(nf, 3)
    f[:5] = rs.randint(0, 3 * nf, (5, 3))
    return v.astype(np.float32), f.astype(np.int32)
  v = np.stack([rs.uniform(-8, W + 8, nv), rs.uniform(-8, H + 8, nv), rs.uniform(5, 15, nv)], 1)
  # Distinct vertex triples: a duplicated triangle (same vertices, permuted) is an exact depth tie that float32
  # rounding breaks either way, so "exact ids" would be ill-defined. Exact ties are tested separately.
  f = rs.randint(0, nv, (4 * nf, 3))
  _, first = np.unique(np.sort(f, 1), axis=0, return_index=True)
  f = f[np.sort(first)[:nf]]
  return v.astype(np.float32), f.astype(np.int32)


@pytest.mark.parametrize("seed,small", [(0, False), (1, False), (2, True), (3, True)])
def test_matches_brute_force(seed, small):
  v, f = _random_mesh(seed, small=small)
  ids, bary, z = R.rasterize(v, f, H, W, tile=8, chunk=8, tiles_per_step=4)
  rid, rb, rz = R.rasterize_reference(v, f, H, W)
  assert 0.2 < (rid >= 0).mean()
  np.testing.assert_array_equal(np.asarray(ids), rid)  # exact triangle ids
  np.testing.assert_allclose(np.asarray(bary), rb, atol=1e-5)
  np.testing.assert_allclose(np.asarray(z), rz, rtol=1e-5)
  col = np.random.RandomState(seed).rand(v.shape[0], 3).astype(np.float32)
  img = np.asarray(R.interpolate(ids, bary, f, col, background=-1.0))
  ref = np.where((rid >= 0)[..., None], np.einsum("hwi,hwic->hwc", rb, col[f[np.maximum(rid, 0)]]), -1.0)
  np.testing.assert_allclose(img, ref, atol=1e-5)  # colours to 1e-5


@settings(max_examples=12, deadline=None, derandomize=True)
@given(st.integers(0, 10_000))
def test_property_random_meshes_any_tiling(seed):
  v, f = _random_mesh(seed, nv=30, nf=20)
  ids = np.asarray(R.rasterize(v, f, H, W, tile=16, chunk=4, tiles_per_step=2)[0])
  np.testing.assert_array_equal(ids, R.rasterize_reference(v, f, H, W)[0])


def _quad_tri(x0, y0, x1, y1, z):
  return np.array([[x0, y0, z], [x1, y0, z], [x0, y1, z]], np.float32)


def test_occlusion_order_independent_of_face_order():
  near, far = _quad_tri(2, 2, 40, 35, 6.0), _quad_tri(2, 2, 40, 35, 9.0)
  for verts, near_id in ((np.concatenate([near, far]), 0), (np.concatenate([far, near]), 1)):
    f = np.array([[0, 1, 2], [3, 4, 5]], np.int32)
    ids, _, z = R.rasterize(verts, f, H, W, tile=8, chunk=8)
    ids = np.asarray(ids)
    assert np.all(ids[ids >= 0] == near_id)
    np.testing.assert_allclose(np.asarray(z)[ids >= 0], 6.0, rtol=1e-6)


def test_exact_tie_goes_to_lower_index():
  t = _quad_tri(2, 2, 40, 35, 7.0)
  ids = np.asarray(R.rasterize(np.concatenate([t, t]), np.array([[3, 4, 5], [0, 1, 2]], np.int32), H, W)[0])
  assert set(np.unique(ids)) == {-1, 0}


def test_empty_and_offscreen_and_degenerate():
  v = np.concatenate([_quad_tri(100, 100, 140, 130, 7.0),  # off screen
                      np.array([[5, 5, 7], [20, 20, 7], [35, 35, 7]], np.float32),  # collinear: zero area
                      np.array([[5, 5, 7], [5, 5, 7], [30, 9, 7]], np.float32),  # repeated vertex
                      _quad_tri(2, 2, 40, 35, 1.0)])  # behind the z clip
  f = np.arange(12, dtype=np.int32).reshape(4, 3)
  ids, bary, z = R.rasterize(v, f, H, W)
  assert np.all(np.asarray(ids) == -1) and np.all(np.asarray(z) == -1) and np.all(np.asarray(bary) == 0)


def test_perspective_correct_barycentrics():
  # A triangle slanted in depth: perspective-correct weights interpolate 1/z linearly in screen space.
  v = np.array([[0, 0, 6.0], [47, 0, 12.0], [0, 39, 6.0]], np.float32)
  ids, bary, z = R.rasterize(v, np.array([[0, 1, 2]], np.int32), H, W)
  b = np.asarray(bary)[0, 20]  # pixel (row 0, col 20): 2-D weights (27/47, 20/47, 0)
  w = np.array([27 / 47 / 6, 20 / 47 / 12, 0])
  np.testing.assert_allclose(b, w / w.sum(), atol=1e-6)
  np.testing.assert_allclose(np.asarray(z)[0, 20], 1 / w.sum(), rtol=1e-6)


def test_pixel_centre_projection():
  p = np.asarray(R.project_to_pixels(jnp.array([[0.0, 0.0, 10.0], [1.0, 1.0, 10.0]]), 512))
  np.testing.assert_allclose(p[0], [255.5, 255.5, 10.0])
  np.testing.assert_allclose(p[1], [255.5 + 232.0, 255.5 - 232.0, 10.0], rtol=1e-6)


def test_batch_sharded_on_8_devices():
  devs = jax.devices()
  if len(devs) < 8:
    pytest.skip("needs 8 (fake) devices")
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  vs, fs = zip(*[_random_mesh(s, nv=40, nf=30) for s in range(8)])
  f = fs[0]
  v = np.stack(vs)
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  vb = jax.device_put(v, sh)
  fn = jax.jit(jax.vmap(lambda x: R.rasterize(x, f, H, W, tile=8, chunk=8)[0]), out_shardings=sh)
  out = fn(vb)
  assert out.sharding.spec == sh.spec
  for i in range(8):
    np.testing.assert_array_equal(np.asarray(out[i]), R.rasterize_reference(v[i], f, H, W)[0])


def test_batch_shard_map_on_explicit_mesh():
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake) devices")
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  vs, fs = zip(*[_random_mesh(s, nv=40, nf=30) for s in range(8)])
  v = np.stack(vs)
  vb = jax.device_put(v, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  ids, bary, _ = R.rasterize_sharded(vb, fs[0], H, W, mesh, tile=8, chunk=8)
  assert ids.sharding.spec[0] == "data"
  ids = np.asarray(ids)
  for i in range(8):
    np.testing.assert_array_equal(ids[i], R.rasterize_reference(v[i], fs[0], H, W)[0])


def test_dense_face_mesh_window_matches_brute_force():
  # The ~70k-triangle synthetic head at 512², checked exactly on two 48×48 windows (eye hole edge and nose), where
  # triangles are about a pixel wide: the binned path on a realistic mesh.
  import jax.numpy as jnp
  from r3p.face import bfm
  m = bfm.synthetic_face_model((220, 160))
  faces = m.render_faces()
  pix = np.asarray(R.project_to_pixels(bfm.to_camera(jnp.asarray(m.mean_shape)), 512))
  for y0, x0 in ((200, 150), (260, 232)):
    v = pix - np.array([x0, y0, 0], np.float32)
    ids = np.asarray(R.rasterize(v, faces, 48, 48)[0])
    p = v[faces]
    near = np.nonzero((p[..., 0].max(1) > -1) & (p[..., 0].min(1) < 49) & (p[..., 1].max(1) > -1)
                      & (p[..., 1].min(1) < 49))[0]
    rid = R.rasterize_reference(v, faces[near], 48, 48)[0]
    ref = np.where(rid >= 0, near[np.maximum(rid, 0)], -1)
    assert (ref >= 0).mean() > 0.5
    np.testing.assert_array_equal(ids, ref)
