"""MediaPipe FaceLandmarker (tasks API) from a local `.task` file: 478 points per face (468 mesh + 10 iris).

The model file is user-supplied (r3p never downloads): pass its path, or set R3P_MEDIAPIPE_DIR to a folder holding
`face_landmarker.task`. Points are returned in pixels (x right, y down), z dropped, as the official extractor does.
Video mode follows `extract_lm478_from_frames`: every frame goes through an IMAGE-mode and a VIDEO-mode landmarker
(VIDEO timestamps int(1000/fps·anti_smooth_factor·i) ms) and the eye/mouth points come from IMAGE mode.
"""
from __future__ import annotations

import os
import pathlib
import warnings

import numpy as np

from r3p.face import bfm

TASK_NAME = "face_landmarker.task"
ENV_DIR = "R3P_MEDIAPIPE_DIR"

# Inside-the-mouth points taken from IMAGE mode by the official combination (the list repeats 72).
MP_WITHIN_MOUTH = (76, 62, 184, 183, 74, 72, 73, 41, 72, 38, 11, 12, 302, 268, 303, 271, 304, 272, 408, 407, 292, 306,
                   325, 307, 319, 320, 403, 404, 316, 315, 15, 16, 86, 85, 179, 180, 89, 90, 96, 77)
MP_MOUTH = bfm.MP_INNER_LIP + bfm.MP_OUTER_LIP + MP_WITHIN_MOUTH


class FaceDetectionError(RuntimeError):
  """No face, several faces, or an unreadable input (the message names the file and frame)."""


def resolve_task_path(path=None, name: str = TASK_NAME) -> pathlib.Path:
  """The landmarker/segmenter model: `path`, else $R3P_MEDIAPIPE_DIR/<name>; a clear error when neither exists."""
  if path:
    p = pathlib.Path(path)
  elif os.environ.get(ENV_DIR):
    p = pathlib.Path(os.environ[ENV_DIR]) / name
  else:
    raise FaceDetectionError(f"no MediaPipe model given: pass its path (e.g. --landmarker {name}) or set "
                             f"{ENV_DIR} to the folder holding {name} (r3p does not download it)")
  if not p.is_file():
    raise FaceDetectionError(f"MediaPipe model file not found: {p}")
  return p


def read_image_rgb(path) -> np.ndarray:
  """uint8 RGB [H,W,3] read with OpenCV (as the official code); clear error on a missing or corrupt file."""
  import cv2

  if not os.path.isfile(path):
    raise FaceDetectionError(f"{path}: file not found")
  img = cv2.imread(str(path), cv2.IMREAD_COLOR)
  if img is None:
    raise FaceDetectionError(f"{path}: cannot decode the image (corrupt or not an image)")
  return np.ascontiguousarray(img[..., ::-1])


def read_video_rgb(path) -> tuple[np.ndarray, float]:
  """All frames uint8 RGB [T,H,W,3] and the fps, read with OpenCV (as the official code)."""
  import cv2

  if not os.path.isfile(path):
    raise FaceDetectionError(f"{path}: file not found")
  cap = cv2.VideoCapture(str(path))
  fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
  frames = []
  while cap.isOpened():
    ok, f = cap.read()
    if not ok or f is None:
      break
    frames.append(f[..., ::-1])
  cap.release()
  if not frames:
    raise FaceDetectionError(f"{path}: cannot decode any video frame")
  return np.ascontiguousarray(np.stack(frames)), float(fps)


class Landmarker:
  """IMAGE/VIDEO-mode FaceLandmarker on one `.task` file. IMAGE mode asks for up to `MAX_FACES` faces (the official
  code asks for 1 and silently takes the most confident): several faces are an error, or with `pick_largest=True`
  the face with the largest landmark box wins and `faces_seen` records the most faces any image showed (the caller
  says so once)."""

  MAX_FACES = 4

  def __init__(self, task_path=None, *, pick_largest: bool = False):
    from mediapipe.tasks.python import BaseOptions, vision

    self.path = resolve_task_path(task_path)
    self._vision = vision
    self._base = BaseOptions(model_asset_path=str(self.path))
    self.pick_largest = pick_largest
    self.faces_seen = 0
    try:
      self._image = vision.FaceLandmarker.create_from_options(
          vision.FaceLandmarkerOptions(base_options=self._base, running_mode=vision.RunningMode.IMAGE,
                                     num_faces=self.MAX_FACES))
    except Exception as e:
      raise FaceDetectionError(f"{self.path}: cannot load the FaceLandmarker model ({e})") from None

  def _points(self, result, shape, where: str, allow_missing=False):
    faces = result.face_landmarks
    if len(faces) == 0:
      if allow_missing:
        return None
      raise FaceDetectionError(f"{where}: no face detected")
    h, w = shape[:2]
    pts = [np.array([[p.x, p.y] for p in f], np.float64) * np.array([w, h]) for f in faces]
    if len(pts) > 1:
      if not self.pick_largest:
        raise FaceDetectionError(f"{where}: {len(faces)} faces detected, expected exactly one")
      self.faces_seen = max(self.faces_seen, len(pts))
      area = [np.ptp(q[:, 0]) * np.ptp(q[:, 1]) for q in pts]  # landmark bounding box, px²
      return pts[int(np.argmax(area))]
    self.faces_seen = max(self.faces_seen, 1)
    return pts[0]

  def detect_image(self, img_rgb: np.ndarray, name: str = "image") -> np.ndarray:
    """[478,2] pixel coordinates of the one face in an uint8 RGB image."""
    import mediapipe as mp

    img = np.ascontiguousarray(np.asarray(img_rgb, np.uint8))
    res = self._image.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=img))
    return self._points(res, img.shape, name)

  def detect_video(self, frames: np.ndarray, fps: float = 25.0, anti_smooth_factor: float = 20.0,
                   name: str = "video", progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(img_lm, vid_lm) [T,478,2] in pixels for uint8 RGB frames [T,H,W,3]. A frame with no face reuses the previous
    frame's points (official behaviour, with a warning); frame 0 without a face, or any frame with two faces, is an
    error naming the file and frame."""
    import mediapipe as mp

    vision = self._vision
    video = vision.FaceLandmarker.create_from_options(
        vision.FaceLandmarkerOptions(base_options=self._base, running_mode=vision.RunningMode.VIDEO, num_faces=1))
    img_out, vid_out = [], []
    it = range(len(frames))
    if progress:
      from tqdm import tqdm
      it = tqdm(it, desc="landmarks", unit="frame")
    try:
      for i in it:
        frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frames[i], np.uint8))
        where = f"{name}, frame {i}"
        a = self._points(self._image.detect(frame), frames[i].shape, where, allow_missing=True)
        b = self._points(video.detect_for_video(frame, int((1000 / fps) * anti_smooth_factor * i)),
                         frames[i].shape, where, allow_missing=True)
        if a is None or b is None:
          if i == 0:
            raise FaceDetectionError(f"{where}: no face detected")
          warnings.warn(f"{where}: no face detected, reusing the previous frame's landmarks")
          a, b = img_out[-1], vid_out[-1]
        img_out.append(a)
        vid_out.append(b)
    finally:
      video.close()
    return np.stack(img_out), np.stack(vid_out)

  def close(self):
    self._image.close()


def combine_video_image(img_lm: np.ndarray, vid_lm: np.ndarray) -> np.ndarray:
  """VIDEO-mode points with the mouth (inner+outer lip, within-mouth) and eye points from IMAGE mode."""
  out = np.array(vid_lm, copy=True)
  out[:, list(MP_MOUTH)] = img_lm[:, list(MP_MOUTH)]
  out[:, list(bfm.MP_EYE)] = img_lm[:, list(bfm.MP_EYE)]
  return out


def video_landmarks(frames, task_path=None, fps: float = 25.0, anti_smooth_factor: float = 20.0, name="video",
                    progress=False) -> np.ndarray:
  """Combined [T,478,2] landmarks of a video (the inference path uses anti_smooth_factor 20, the dataset 2)."""
  lm = Landmarker(task_path)
  try:
    a, b = lm.detect_video(frames, fps, anti_smooth_factor, name=name, progress=progress)
  finally:
    lm.close()
  return combine_video_image(a, b)
