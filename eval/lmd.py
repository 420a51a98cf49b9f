"""LMD: mean Euclidean distance between the mouth landmarks of generated and ground-truth frames.

Points: MediaPipe FaceMesh lip contours, the 20 outer-lip indices (61 185 40 39 37 0 267 269 270 409 291 375 321 405
314 17 84 181 91 146) and the 20 inner-lip indices (78 191 80 81 82 13 312 311 310 415 308 324 318 402 317 14 87 178
88 95) = `r3p.face.bfm.MP_OUTER_LIP + MP_INNER_LIP`. Normalisation: coordinates are divided by the frame width and
multiplied by 256, i.e. LMD is in pixels of a 256-pixel-wide frame (comparable across resolutions); no alignment
(generated and ground-truth frames share the camera in self-reenactment). Per frame: mean over the 40 points.
"""
from __future__ import annotations

import numpy as np

MP_OUTER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
MP_INNER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
MOUTH = MP_OUTER_LIP + MP_INNER_LIP
REF_WIDTH = 256.0


def mouth_points(lm478, width: int) -> np.ndarray:
  """[..., 478, 2] pixel landmarks -> [..., 40, 2] mouth points in 256-wide-frame pixels."""
  return np.asarray(lm478, np.float64)[..., list(MOUTH), :] * (REF_WIDTH / float(width))


def lmd_per_frame(pred_mouth, gt_mouth) -> np.ndarray:
  """[T, 40, 2] x2 -> [T] mean point distance."""
  return np.linalg.norm(np.asarray(pred_mouth) - np.asarray(gt_mouth), axis=-1).mean(-1)
