"""Tests of the MediaPipe FaceLandmarker wrapper (needs the shared .task file; its error paths do not)."""
import numpy as np
import pytest

from r3p.face import landmarks
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def lm():
  obj = landmarks.Landmarker(shared_path("assets", "mediapipe", "face_landmarker.task"))
  yield obj
  obj.close()


def test_model_path_resolution(tmp_path, monkeypatch):
  monkeypatch.delenv(landmarks.ENV_DIR, raising=False)
  with pytest.raises(landmarks.FaceDetectionError, match="R3P_MEDIAPIPE_DIR"):
    landmarks.resolve_task_path(None)
  with pytest.raises(landmarks.FaceDetectionError, match="not found"):
    landmarks.resolve_task_path(tmp_path / "nope.task")
  (tmp_path / "face_landmarker.task").write_bytes(b"x")
  monkeypatch.setenv(landmarks.ENV_DIR, str(tmp_path))
  assert landmarks.resolve_task_path(None) == tmp_path / "face_landmarker.task"


def test_bad_images(tmp_path):
  with pytest.raises(landmarks.FaceDetectionError, match="not found"):
    landmarks.read_image_rgb(tmp_path / "x.png")
  (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
  with pytest.raises(landmarks.FaceDetectionError, match="bad.png: cannot decode"):
    landmarks.read_image_rgb(tmp_path / "bad.png")


def test_combine_takes_eyes_and_mouth_from_image_mode():
  a, b = np.zeros((2, 478, 2)), np.ones((2, 478, 2))
  c = landmarks.combine_video_image(a, b)
  assert c[0, 33, 0] == 0 and c[0, 13, 0] == 0 and c[0, 76, 0] == 0 and c[0, 1, 0] == 1 and c[0, 468, 0] == 1
  assert len(landmarks.MP_WITHIN_MOUTH) == 40 and len(set(landmarks.MP_MOUTH)) == 79  # 72 is listed twice


def test_macron_image(lm):
  img = landmarks.read_image_rgb(shared_path("assets", "examples", "Macron.png"))
  p = lm.detect_image(img, "Macron.png")
  assert p.shape == (478, 2)
  # Reference extent with mediapipe 1.2.2: x 146.0–367.9, y 136.3–402.0 px.
  np.testing.assert_allclose([p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max()],
                             [146.0, 367.9, 136.3, 402.0], atol=1.5)


def test_no_face_and_two_faces(lm):
  with pytest.raises(landmarks.FaceDetectionError, match="blank.png: no face"):
    lm.detect_image(np.full((128, 128, 3), 90, np.uint8), "blank.png")
  img = landmarks.read_image_rgb(shared_path("assets", "examples", "Macron.png"))
  with pytest.raises(landmarks.FaceDetectionError, match="2 faces"):
    lm.detect_image(np.concatenate([img, img], 1), "two.png")
  frames = np.full((2, 128, 128, 3), 90, np.uint8)
  with pytest.raises(landmarks.FaceDetectionError, match="clip.mp4, frame 0: no face"):
    lm.detect_video(frames, name="clip.mp4")


def test_video_modes_on_may(lm):
  frames, fps = landmarks.read_video_rgb(shared_path("assets", "examples", "May_5s.mp4"))
  assert frames.shape == (125, 512, 512, 3) and fps == 25
  a, b = lm.detect_video(frames[:6], fps, name="May_5s.mp4")
  assert a.shape == b.shape == (6, 478, 2)
  assert np.abs(a - b).mean() < 5.0  # IMAGE and VIDEO modes agree to a few pixels
  c = landmarks.combine_video_image(a, b)
  np.testing.assert_array_equal(c[:, 33], a[:, 33])
