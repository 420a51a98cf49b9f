"""SECC images: the 3DMM mesh rendered with the fixed per-vertex NCC colour code (PIPELINE.md §2), and blink editing.

Layout: NHWC float32 in [−1, 1], background and eye holes −1. The mesh is always rendered with zero pose (id and
expression only; head pose reaches the network through the camera), at depth 10 in front of a PyTorch3D FoV camera
(fov 2·atan(112/1015)), faces = BFM `tri` minus the eye triangles.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from r3p.face import bfm, rasterize


class SeccRenderer:
  """Renders SECC images for one face model. `render(id [B,80], exp [B,64])` -> (secc [B,S,S,3], mask [B,S,S,1]).

  mask_face0_quirk=True reproduces the official mask `pix_to_face > 0` on PyTorch3D's packed face ids: the first
  triangle counts as background, but only in the first mesh of each rendered batch (the official driver renders
  chunks of 50 frames, so frames 0, 50, 100, ... and the single-frame cano/src SECCs). False uses `>= 0`.
  """

  def __init__(self, model: bfm.FaceModel, size: int = 512, *, mask_face0_quirk: bool = True, tile: int = 8,
               chunk: int = 16, tiles_per_step: int = 128):
    self.model = model
    self.size = size
    self.faces = jnp.asarray(model.render_faces(), jnp.int32)
    self.ncc = jnp.asarray(model.ncc, jnp.float32)
    self.mean = jnp.asarray(model.mean_shape)
    self.id_base = jnp.asarray(model.id_base)
    self.exp_base = jnp.asarray(model.exp_base)
    self.mask_face0_quirk = mask_face0_quirk
    self._kw = dict(tile=tile, chunk=chunk, tiles_per_step=tiles_per_step)
    self._render = jax.jit(jax.vmap(self._render_one))

  def _render_one(self, id_coeff, exp_coeff, face0_is_background):
    verts = bfm.shape_from_coeffs(self.mean, self.id_base, self.exp_base, id_coeff, exp_coeff)
    pix = rasterize.project_to_pixels(bfm.to_camera(verts), self.size)
    p2f, bary, _ = rasterize.rasterize(pix, self.faces, self.size, self.size, **self._kw)
    col = rasterize.interpolate(p2f, bary, self.faces, self.ncc, background=0.0)
    mask = (p2f >= 0) & ~(face0_is_background & (p2f == 0))
    col = col * mask[..., None]
    return (col - 0.5) / 0.5, mask[..., None].astype(jnp.float32)

  def render(self, id_coeff, exp_coeff, chunk: int = 50, *, masks: bool = True):
    """id [B,80] (or [1,80], broadcast), exp [B,64] -> (secc [B,S,S,3] in [−1,1], mask [B,S,S,1]) as numpy,
    rendered `chunk` frames at a time (the official driver uses chunks of 50). masks=False returns (secc, None)
    without bringing the masks to the host."""
    exp_coeff = np.asarray(exp_coeff, np.float32).reshape(-1, bfm.EXP_DIM)
    id_coeff = np.broadcast_to(np.asarray(id_coeff, np.float32).reshape(-1, bfm.ID_DIM),
                               (exp_coeff.shape[0], bfm.ID_DIM))
    outs, mks = [], []
    for i in range(0, exp_coeff.shape[0], chunk):
      n = min(chunk, exp_coeff.shape[0] - i)
      quirk = (np.arange(n) == 0) & self.mask_face0_quirk  # packed id 0 exists in the chunk's first mesh only
      s, m = self._render(jnp.asarray(id_coeff[i:i + chunk]), jnp.asarray(exp_coeff[i:i + chunk]), jnp.asarray(quirk))
      outs.append(np.asarray(s))
      mks.append(np.asarray(m) if masks else None)
      del s, m
    # One chunk (the streaming driver's case): no concatenation, i.e. no second copy of the block.
    cat = lambda xs: xs[0] if len(xs) == 1 else np.concatenate(xs)  # noqa: E731
    return cat(outs), (cat(mks) if masks else None)


# ---------------------------------------------------------------------------------------------------------------
# Blink (inference/edit_secc.py `blink_eye_for_secc`), pure image processing on a frontal SECC


def blink_eye_for_secc(secc, close_eye_percent: float = 0.5) -> np.ndarray:
  """Closes the eye holes of a canonical SECC by a fraction p ∈ [0,1]. secc [H,W,3] in [−1,1] -> [H,W,3].

  As the official function: the image is quantised to floor((x+1)/2·255) and returned as q/127.5 − 1 (also for
  p = 0); the eye holes are the non-face pixels in the prior boxes rows [H/4,H/2), columns [W/4,W/2) and
  [W/2,3W/4); face pixels within 5 px of them join the eye; per column the eye rows at or above
  p·mean + (1−p)·min and at or below p·mean + (1−p)·max (both inclusive) take the colour of the nearest remaining
  face pixel. Nearest-neighbour ties may resolve differently from sklearn's KD-tree.
  """
  from scipy.spatial import cKDTree

  if not 0.0 <= close_eye_percent <= 1.0:
    raise ValueError(f"close_eye_percent must be in [0, 1], got {close_eye_percent}")
  img = np.floor((np.asarray(secc, np.float64) + 1) / 2 * 255).astype(np.int64)
  if close_eye_percent == 0:
    return (img / 127.5 - 1).astype(np.float32)
  img = img.copy()
  face = (img[..., 0] != 0) & (img[..., 1] != 0) & (img[..., 2] != 0)
  h, w = face.shape
  left = np.zeros((h, w), bool)
  right = np.zeros((h, w), bool)
  left[h // 4:h // 2, w // 4:w // 2] = True
  right[h // 4:h // 2, w // 2:w // 4 * 3] = True
  coarse = ~face & (left | right)
  coarse_xy = np.argwhere(coarse)
  if coarse_xy.size == 0 or not (~face & left).any() or not (~face & right).any():
    return (img / 127.5 - 1).astype(np.float32)  # no eye holes to close
  min_h, max_h = coarse_xy[:, 0].min(), coarse_xy[:, 0].max()
  lw = np.argwhere(~face & left)[:, 1]
  rw = np.argwhere(~face & right)[:, 1]
  room = 4
  region = np.zeros((h, w), bool)
  # Same (python-slice) extents as the official code.
  region[max(min_h - room, 0):max_h + room, max(lw.min() - room, 0):lw.max() + room] = True
  region[max(min_h - room, 0):max_h + room, max(rw.min() - room, 0):rw.max() + room] = True
  around = face & region
  face_xy = np.argwhere(around)
  d, _ = cKDTree(coarse_xy).query(face_xy, k=1)
  erode = face_xy[d <= 5]
  around[erode[:, 0], erode[:, 1]] = False
  eye = ~around & region

  rows = np.mgrid[0:h, 0:w][0]
  n = eye.sum(0)
  mean = np.where(eye, rows, 0).sum(0) / np.clip(n, 1, h)
  lo = np.where(eye, rows, 99999).min(0)
  hi = np.where(eye, rows, -99999).max(0)
  up = close_eye_percent * mean + (1 - close_eye_percent) * lo
  down = close_eye_percent * mean + (1 - close_eye_percent) * hi
  blink = (np.where(eye, rows, 99999) <= up[None]) | (np.where(eye, rows, -99999) >= down[None])
  src = np.argwhere(around)
  dst = np.argwhere(blink)
  if src.size and dst.size:
    _, idx = cKDTree(src).query(dst, k=1)
    img[dst[:, 0], dst[:, 1]] = img[src[idx, 0], src[idx, 1]]
  return (img / 127.5 - 1).astype(np.float32)


def periodic_blink_schedule(num_frames: int, rng, period: int = 125) -> dict[int, float]:
  """`blink_mode='period'` (PIPELINE §7.4 step 3): frame -> close fraction p. Every `period` frames from frame 0 a
  blink of D ~ randint(8, 12) frames (rng: a `random.Random`-like object with randint) follows the parabola
  p = −4k²/D² + 4k/D, stopping before frame T−1."""
  out = {}
  for i in range(0, num_frames, period):
    dur = rng.randint(8, 12)
    for k in range(dur):
      if i + k >= num_frames - 1:
        break
      out[i + k] = -4 * k * k / dur ** 2 + 4 * k / dur
  return out


def apply_blinks(secc_frames, schedule: dict[int, float]) -> np.ndarray:
  """Applies `blink_eye_for_secc` to the scheduled frames of [T,H,W,3] (copy)."""
  out = np.array(secc_frames, np.float32, copy=True)
  for i, p in schedule.items():
    out[i] = blink_eye_for_secc(out[i], float(np.clip(p, 0.0, 1.0)))
  return out
