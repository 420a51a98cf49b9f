"""AED / APD: expression and pose distance between generated and driving frames, from 3DMM fits of landmarks.

Both videos' MediaPipe landmarks are fitted independently per frame with the face toolkit (`r3p.face.fit.fit_images`,
the image objective of the official fitting, BFM 2009 with 80 identity / 64 expression coefficients when --bfm_dir is
given). Per frame:
  AED = mean over the 64 expression coefficients of |exp_pred - exp_drv|
  APD = mean over the 6 pose numbers of |pose_pred - pose_drv|, pose = (3 Euler angles in radians, 3 translation)
The L2 variant (`norm='l2'`) uses the Euclidean norm of the difference vectors instead. Reported: the mean over the
frames where both faces were found.
"""
from __future__ import annotations

import numpy as np


def fit_coeffs(lms_px, face_model, height: int, width: int, steps=(200, 200)) -> dict:
  from r3p.face import fit
  return fit.fit_images(np.asarray(lms_px)[:, :468], face_model, height, width, steps=steps)


def distances(pred: dict, drv: dict, norm: str = "l1") -> tuple[np.ndarray, np.ndarray]:
  """Per-frame (aed, apd) from two coefficient dicts {'exp' [T,64], 'euler' [T,3], 'trans' [T,3]}."""
  de = np.asarray(pred["exp"], np.float64) - np.asarray(drv["exp"], np.float64)
  dp = np.concatenate([np.asarray(pred["euler"]) - np.asarray(drv["euler"]),
                       np.asarray(pred["trans"]) - np.asarray(drv["trans"])], -1).astype(np.float64)
  if norm == "l1":
    return np.abs(de).mean(-1), np.abs(dp).mean(-1)
  if norm == "l2":
    return np.linalg.norm(de, axis=-1), np.linalg.norm(dp, axis=-1)
  raise ValueError(f"norm must be 'l1' or 'l2', not {norm!r}")
