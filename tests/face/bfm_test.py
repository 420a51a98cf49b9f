"""Tests of r3p.face.bfm: synthetic model format, loading, generator, geometry, camera and smoothing."""
import numpy as np
import pytest
import scipy.io
from scipy.spatial.transform import Rotation

from r3p.face import bfm
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def mat():
  return bfm.synthetic_face_model(as_mat_dict=True)


def test_synthetic_has_bfm_keys_shapes_dtypes(mat):
  d, mp, eyes = mat
  n3 = d["meanshape"].shape[1]
  assert d["meanshape"].shape == (1, n3) and d["meanshape"].dtype == np.float32
  assert d["idBase"].shape == (n3, 80) and d["exBase"].shape == (n3, 64) and d["texBase"].shape == (n3, 80)
  assert d["meantex"].shape == (1, n3)
  assert d["tri"].shape[1] == 3 and d["tri"].min() == 1 and d["tri"].max() == n3 // 3
  assert d["keypoints"].shape == (1, 68) and d["keypoints"].min() >= 1
  assert d["point_buf"].shape == (n3 // 3, 8)
  assert mp.shape == (468,) and (mp == -999).sum() == 8
  assert eyes.min() >= 1


def test_synthetic_is_deterministic_and_plausible():
  a, b = bfm.synthetic_face_model(), bfm.synthetic_face_model()
  for f in ("mean_shape", "id_base", "exp_base", "tri", "mp468", "eye_faces"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
  np.testing.assert_allclose(a.mean_shape.mean(0), 0, atol=1e-5)  # re-centred
  nose = np.argmax(a.mean_shape[:, 2])
  assert abs(a.mean_shape[nose, 0]) < 0.05  # nose tip on the mid-line, largest z
  assert 0 < len(a.eye_faces) < 0.02 * len(a.tri)
  ext = a.mean_shape.max(0) - a.mean_shape.min(0)
  assert 1.2 < ext[0] < 2.0 and 1.6 < ext[1] < 2.4  # about a head in decimetres
  assert not np.array_equal(bfm.synthetic_face_model(seed=1).id_base, a.id_base)


def test_load_roundtrip_and_missing_files(tmp_path, mat):
  d, mp, eyes = mat
  with pytest.raises(bfm.FaceModelError, match="BFM_model_front.mat"):
    bfm.load_face_model(tmp_path)
  scipy.io.savemat(tmp_path / "BFM_model_front.mat", d)
  with pytest.raises(bfm.FaceModelError, match="index_mp468_from_mesh35709.npy"):
    bfm.load_face_model(tmp_path)
  np.save(tmp_path / "index_mp468_from_mesh35709.npy", mp)
  np.save(tmp_path / "bfm_left_eye_faces.npy", eyes[:10])
  np.save(tmp_path / "bfm_right_eye_faces.npy", eyes[10:])
  m = bfm.load_face_model(tmp_path)
  ref = bfm.synthetic_face_model()
  np.testing.assert_allclose(m.mean_shape, ref.mean_shape, atol=1e-6)
  np.testing.assert_array_equal(m.tri, ref.tri)
  np.testing.assert_array_equal(m.eye_faces, ref.eye_faces)
  np.testing.assert_array_equal(m.mp468[~m.mp468_valid], 0)  # −999 -> vertex 0
  np.testing.assert_allclose(m.ncc.min(0), 0) and np.testing.assert_allclose(m.ncc.max(0), 1)
  np.save(tmp_path / "ncc_code.npy", np.full((3, m.num_vertices), 0.5, np.float32))
  assert np.all(bfm.load_face_model(tmp_path).ncc == 0.5)  # the official constant wins when supplied
  (tmp_path / "BFM_model_front.mat").write_bytes(b"garbage")
  with pytest.raises(bfm.FaceModelError, match="cannot read"):
    bfm.load_face_model(tmp_path)


def test_eye_faces_fallback_from_mp_contours(mat):
  d, mp, eyes = mat
  m = bfm._from_bfm_dict(d, mp, None, "x")
  assert m.eye_faces.ndim == 1  # derived without the eye lists


def test_generator_from_source_files(tmp_path):
  rs = np.random.RandomState(0)
  n_full, n_exp, n_front, exp_dim = 30, 25, 20, 79
  shape_mu = rs.randn(3 * n_full, 1)
  shape_pc, shape_ev = rs.randn(3 * n_full, 199), rs.rand(199, 1)
  tex_mu, tex_pc, tex_ev = rs.rand(3 * n_full, 1), rs.randn(3 * n_full, 199), rs.rand(199, 1)
  scipy.io.savemat(tmp_path / "01_MorphableModel.mat", dict(shapeMU=shape_mu, shapePC=shape_pc, shapeEV=shape_ev,
                                                            texMU=tex_mu, texPC=tex_pc, texEV=tex_ev))
  exp_mu = rs.randn(3 * n_exp).astype(np.float32)
  exp_pc = rs.randn(exp_dim, 3 * n_exp).astype(np.float32)
  with open(tmp_path / "Exp_Pca.bin", "wb") as fh:
    fh.write(np.int32(exp_dim).tobytes() + exp_mu.tobytes() + exp_pc.tobytes())
  std = rs.rand(exp_dim)
  np.savetxt(tmp_path / "std_exp.txt", std)
  idx = rs.choice(n_exp, n_front, replace=False) + 1
  trim = rs.choice(n_full, n_exp, replace=False) + 1
  scipy.io.savemat(tmp_path / "BFM_front_idx.mat", dict(idx=idx.reshape(-1, 1)))
  scipy.io.savemat(tmp_path / "BFM_exp_idx.mat", dict(trimIndex=trim.reshape(-1, 1)))
  info = dict(tri=np.array([[1, 2, 3]]), point_buf=np.ones((n_front, 8)), tri_mask2=np.array([[1, 2, 3]]),
              keypoints=np.arange(1, 69).reshape(1, -1), frontmask2_idx=np.arange(1, 5).reshape(-1, 1),
              skinmask=np.ones((1, n_front)))
  scipy.io.savemat(tmp_path / "facemodel_info.mat", info)
  d = bfm.generate_bfm_front(tmp_path)
  ish = trim[idx - 1] - 1
  iex = idx - 1
  v = 7  # one vertex, checked against the formula written out
  np.testing.assert_allclose(d["meanshape"].reshape(-1, 3)[v], shape_mu.reshape(-1, 3)[ish[v]] / 1e5, rtol=1e-6)
  np.testing.assert_allclose(d["idBase"].reshape(-1, 3, 80)[v, :, 5],
                             shape_pc.reshape(-1, 3, 199)[ish[v], :, 5] * shape_ev[5, 0] / 1e5, rtol=1e-5)
  np.testing.assert_allclose(d["exBase"].reshape(-1, 3, 64)[v, :, 9],
                             exp_pc.T.reshape(-1, 3, exp_dim)[iex[v], :, 9] * std[9] / 1e5, rtol=1e-5)
  assert d["texBase"].shape == (3 * n_front, 80)


def test_lm68_off_by_one_quirk():
  m = bfm.synthetic_face_model()
  np.testing.assert_array_equal(m.lm68_index(False), m.keypoints68 - 1)
  np.testing.assert_array_equal(m.lm68_index(True), m.keypoints68)


def test_rotation_matches_scipy_extrinsic_xyz():
  e = np.array([[0.3, -0.2, 0.1], [0.0, 0.5, -0.4]])
  r = np.asarray(bfm.rotation_matrix(e))
  np.testing.assert_allclose(r, Rotation.from_euler("xyz", e).as_matrix(), atol=1e-6)


def test_projection_and_lm2d_frontal():
  m = bfm.synthetic_face_model()
  basis = bfm.keypoint_basis(m, np.arange(m.num_vertices))
  lm = np.asarray(bfm.lm2d_from_coeffs(basis, np.zeros(80), np.zeros(64), np.zeros(3), np.zeros(3)))
  p = m.mean_shape
  u = 1015 * p[:, 0] / (10 - p[:, 2]) + 112
  v = 1015 * p[:, 1] / (10 - p[:, 2]) + 112
  np.testing.assert_allclose(lm[:, 0], u / 224, atol=1e-5)
  np.testing.assert_allclose(lm[:, 1], (224 - v) / 224, atol=1e-5)
  kp = np.asarray(bfm.kp68_for_network(m, np.zeros(80), np.zeros(64), np.zeros(3), np.zeros(3)))
  assert kp.shape == (68, 3) and np.all(kp[:, 2] == 0) and np.all(np.abs(kp) <= 1)


def test_eg3d_camera():
  cam = np.asarray(bfm.eg3d_camera(np.zeros((1, 3)), np.zeros((1, 3))))[0]
  c2w = cam[:16].reshape(4, 4)
  np.testing.assert_allclose(c2w[:3, :3], np.diag([1, -1, -1]), atol=1e-7)
  np.testing.assert_allclose(c2w[:3, 3], [0, 0.006, 2.861], atol=1e-6)
  np.testing.assert_allclose(cam[16:], [2985.29 / 700, 0, 0.5, 0, 2985.29 / 700, 0.5, 0, 0, 1], atol=1e-6)
  # Yaw moves the camera around the head at radius 0.27·10 and keeps it looking at the face.
  cam = np.asarray(bfm.eg3d_camera(np.array([0, 0.4, 0]), np.zeros(3)))
  c2w = cam[:16].reshape(4, 4)
  r = np.asarray(bfm.rotation_matrix(np.array([0, 0.4, 0]))).T
  np.testing.assert_allclose(c2w[:3, 3], 2.7 * r[:, 2] + [0, 0.006, 0.161], atol=1e-5)
  np.testing.assert_allclose(np.linalg.det(c2w[:3, :3]), 1, atol=1e-5)


def test_smoothing_and_pose_mapping():
  x = np.random.RandomState(0).randn(10, 3)
  y = bfm.smooth_features_xd(x, 7)
  np.testing.assert_allclose(y[5], x[2:9].mean(0), atol=1e-6)
  np.testing.assert_allclose(y[0], np.concatenate([x[:3][::-1], x[:4]]).mean(0), atol=1e-6)
  assert [bfm.mirror_index(i, 3) for i in range(8)] == [0, 1, 2, 2, 1, 0, 0, 1]
  eul = np.random.RandomState(1).randn(5, 3) * 0.05
  cams = np.asarray(bfm.eg3d_camera(eul, np.zeros((5, 3))))
  sm = bfm.smooth_camera_sequence(cams, 7)
  const = bfm.smooth_camera_sequence(np.repeat(cams[:1], 5, 0), 7)
  np.testing.assert_allclose(const, np.repeat(cams[:1], 5, 0), atol=1e-6)
  np.testing.assert_allclose(sm[2, [3, 7, 11]], cams[:, [3, 7, 11]].mean(0), atol=1e-6)  # window = all 5
  e, t = bfm.driving_pose(np.ones(3) * 0.1, np.ones(3), eul, np.arange(15.).reshape(5, 3), 7)
  np.testing.assert_allclose(e[0], 0.1, atol=1e-7)
  np.testing.assert_allclose(t[:, 2], 1.0)


def test_canonical_mesh_from_task_and_geometric_mp_map():
  task = shared_path("assets", "mediapipe", "face_landmarker.task")
  canon = bfm.canonical_mesh_from_task(task)
  assert canon.shape == (468, 3)
  assert canon[1, 2] > np.percentile(canon[:, 2], 98)  # mp 1 = nose tip, among the nearest to the viewer
  m = bfm.synthetic_face_model(mp_canonical=canon)
  p = m.mean_shape[m.mp468]
  assert p[33, 0] < p[1, 0] < p[263, 0]  # eye corners either side of the nose
  assert p[152, 1] < p[1, 1] < p[10, 1]  # chin below the nose below the forehead
