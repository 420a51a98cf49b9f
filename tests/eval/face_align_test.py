"""ArcFace alignment: template points give the identity transform and an identical crop."""
import numpy as np

from eval import face_align as fa


def test_template_points_identity():
  m = fa.similarity_matrix(fa.ARCFACE_DST.astype(np.float64))
  np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
  img = np.random.default_rng(0).integers(0, 255, (112, 112, 3)).astype(np.uint8)
  out = fa.norm_crop(img, fa.ARCFACE_DST.astype(np.float64))
  np.testing.assert_array_equal(out, img)


def test_scaled_and_shifted_points():
  pts = fa.ARCFACE_DST.astype(np.float64) * 2 + [30, 10]
  m = fa.similarity_matrix(pts)
  np.testing.assert_allclose(m, [[0.5, 0, -15], [0, 0.5, -5]], atol=1e-9)


def test_outside_reads_zero():
  img = np.full((50, 50, 3), 200, np.uint8)
  out = fa.warp_affine(img, np.array([[1, 0, -60], [0, 1, 0]], np.float64), (10, 10))
  assert float(np.abs(np.asarray(out)).max()) == 0
