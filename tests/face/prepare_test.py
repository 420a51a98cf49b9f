"""Tests of the source/driving preprocessing and its command line."""
import numpy as np
import pytest

from r3p.face import bfm, prepare, secc
from tests.conftest import shared_path


class _StubLandmarker:
  """detect_image returns a fixed box of landmarks scaled to the image."""

  def __init__(self, box):
    self.box = np.asarray(box, float)  # x0, y0, x1, y1 as fractions

  def detect_image(self, img, name):
    h, w = img.shape[:2]
    x0, y0, x1, y1 = self.box * [w, h, w, h]
    return np.array([[x0, y0], [x1, y1], [x0, y1], [x1, y0]] * 120)[:478]


def test_crop_rules():
  img = np.random.RandomState(0).randint(0, 255, (512, 512, 3)).astype(np.uint8)
  out, cropped = prepare.crop_on_face_area(img, _StubLandmarker([0.25, 0.25, 0.75, 0.75]), "x")
  assert not cropped and out is img  # area 0.25 ≥ 0.2: kept as is
  out, cropped = prepare.crop_on_face_area(img, _StubLandmarker([0.4, 0.4, 0.6, 0.6]), "x")
  assert cropped and out.shape == (512, 512, 3)
  wide = np.zeros((300, 600, 3), np.uint8)
  sq = prepare.square_on_face(wide, _StubLandmarker([0.8, 0.2, 0.9, 0.5]), "x")
  assert sq.shape == (300, 300, 3)
  with pytest.raises(prepare.PrepareError, match="3000×17"):
    prepare.check_image(np.zeros((17, 3000, 3), np.uint8), "thin.png")


def test_render_driving_small():
  m = bfm.synthetic_face_model(resolution=(40, 30))
  r = secc.SeccRenderer(m, 64)
  t = 5
  rs = np.random.RandomState(0)
  exp = rs.randn(t, 64).astype(np.float32) * 0.3
  euler = rs.randn(t, 3).astype(np.float32) * 0.05
  out = prepare.render_driving(m, np.zeros((1, 80)), exp, euler, np.zeros((t, 3)), renderer=r)
  assert out["cond_tgt"].shape == (t, 64, 64, 3) and out["kp_d"].shape == (t, 68, 3)
  assert out["camera"].shape == (t, 25)
  np.testing.assert_array_equal(out["cond_src"][0], out["cond_tgt"][0])
  raw = prepare.render_driving(m, np.zeros((1, 80)), exp, euler, np.zeros((t, 3)), renderer=r, smooth_kp=False,
                               smooth_camera=False)
  np.testing.assert_allclose(out["kp_d"][2], raw["kp_d"][:5].mean(0) * 0 + bfm.smooth_features_xd(raw["kp_d"])[2],
                             atol=1e-6)
  np.testing.assert_allclose(raw["camera"], np.asarray(bfm.eg3d_camera(euler, np.zeros((t, 3)))), atol=1e-6)


@pytest.fixture()
def assets():
  a = shared_path("assets")
  return ["--landmarker", str(a / "mediapipe" / "face_landmarker.task"), "--segmenter",
          str(a / "mediapipe" / "selfie_segmentation.tflite")]


def test_cli_bad_inputs_fail_cleanly(tmp_path, capsys, assets):
  import cv2
  cv2.imwrite(str(tmp_path / "thin.png"), np.full((17, 3000, 3), 128, np.uint8))
  cv2.imwrite(str(tmp_path / "blank.png"), np.full((256, 256, 3), 128, np.uint8))
  (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
  for f, msg in (("thin.png", "unusable"), ("blank.png", "no face"), ("corrupt.png", "cannot decode")):
    out = tmp_path / ("out_" + f)
    rc = prepare.main(["--image", str(tmp_path / f), "--out", str(out), "--verbose"] + assets)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and msg in err[-1] and f in err[-1]
    assert not out.exists()
  assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no partial folder left behind
  rc = prepare.main(["--image", str(tmp_path / "thin.png"), "--out", str(tmp_path / "o"), "--verbose"])
  assert rc == 2 or "R3P_MEDIAPIPE_DIR" in capsys.readouterr().err


def test_cli_macron(tmp_path, capsys, assets):
  img = shared_path("assets", "examples", "Macron.png")
  out = tmp_path / "macron"
  rc = prepare.main(["--image", str(img), "--out", str(out), "--verbose"] + assets)
  assert rc == 0, capsys.readouterr().err
  assert "SYNTHETIC" in capsys.readouterr().out
  for f in ("input_512.png", "landmarks.png", "segmap.png", "head.png", "torso_inpainted.png", "background.png",
            "secc_cano.png", "secc_src.png", "prepared.npz"):
    assert (out / f).is_file(), f
  d = np.load(out / "prepared.npz")
  for k in ("img", "ref_gt_img", "cond_cano", "cond_src", "ref_torso_img", "bg_img"):
    assert d[k].shape == (1, 512, 512, 3) and d[k].dtype == np.float32, k
    assert d[k].min() >= -1 and d[k].max() <= 1, k
  assert d["segmap"].shape == (1, 512, 512, 6) and np.all(d["segmap"].sum(-1) == 1)
  assert d["segmap"][0, 270, 256, 3] == 1  # face skin at the face centre
  assert d["kp_s"].shape == (1, 68, 3) and d["camera"].shape == (1, 25)
  assert d["img"][0, 5, 5].tolist() == [-1, -1, -1]  # head image: background is −1
  assert float(d["lm_err_px"][0]) < 6.0
  np.testing.assert_allclose(d["camera"][0, 16:], [2985.29 / 700, 0, 0.5, 0, 2985.29 / 700, 0.5, 0, 0, 1], atol=1e-5)


def test_non_square_source_square_crop_vs_official_stretch():
  from r3p.face import landmarks
  a = shared_path("assets")
  img = landmarks.read_image_rgb(a / "examples" / "Macron.png")
  wide = np.concatenate([np.full((512, 150, 3), 90, np.uint8), img, np.full((512, 150, 3), 90, np.uint8)], 1)
  m = bfm.synthetic_face_model(resolution=(60, 45),
                               mp_canonical=bfm.canonical_mesh_from_task(a / "mediapipe" / "face_landmarker.task"))
  r = secc.SeccRenderer(m, 64)
  kw = dict(landmarker_path=a / "mediapipe" / "face_landmarker.task",
            segmenter_path=a / "mediapipe" / "selfie_segmentation.tflite", renderer=r, name="wide.png", log=None)
  ours = prepare.prepare_source(wide, m, **kw)
  official = prepare.prepare_source(wide, m, official_aspect=True, **kw)
  ref = img.astype(np.float32) / 127.5 - 1
  assert np.abs(ours["ref_gt_img"][0] - ref).mean() < 0.1  # face-centred square crop ≈ the original portrait
  assert np.abs(official["ref_gt_img"][0] - ref).mean() > 0.2  # stretched to 512² as the official code does
  assert ours["cond_cano"].shape == (1, 64, 64, 3) and ours["lm_err_px"][0] < 6
  assert official["lm_err_px"][0] > ours["lm_err_px"][0]  # the official x-scale bug hurts the fit
