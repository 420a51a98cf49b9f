"""Landmark-based 3DMM fitting with optax (PIPELINE.md §3.2–3.3), jitted.

Landmarks are the 468 MediaPipe mesh points in pixels (x right, y down) of an H×W image. They are flipped
(y ← H − y) and divided by H/224 so they sit in the 224 frame with v up, and compared with the projection of the
model's 468 keypoint vertices (`FaceModel.mp468`). Loss = mean over [T,468,2] of w·(proj − gt)² with per-point
weights, + λ_id·mean(id²) + λ_exp·mean(exp²) (+ λ_lap·temporal Laplacians for video).

Schedule (both modes): Adam lr 0.1 for {euler, trans} ("frame") and for {id, exp}; stage A = 200 steps of the
landmark loss updating the frame parameters only; stage B = 200 steps of the full loss updating both, the frame
optimiser keeping its Adam state. The official stage C (batches, lr 0.005) is not run: its write-back is a no-op,
so the official outputs are the stage-B values.
"""
from __future__ import annotations

import functools
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from r3p.face import bfm

IMAGE_LAMBDAS = dict(id=0.3, exp=0.05, lap=0.0)
VIDEO_LAMBDAS = {"global": dict(id=0.2, exp=0.6, lap=1.0), "finegrained": dict(id=0.3, exp=0.05, lap=1.0)}


def landmark_weights(mode: str) -> np.ndarray:
  """[468] per-point weights (shared by x and y); later sets override earlier ones as in the official code."""
  w = np.ones(468, np.float32)
  if mode == "image":
    w[list(bfm.MP_EYE)] = 5
    w[list(bfm.MP_INNER_LIP)] = 2
    w[list(bfm.MP_OUTER_LIP)] = 2
  elif mode == "video":
    w[list(bfm.MP_EYE)] = 3
    w[list(bfm.MP_UPPER_EYELID)] = 20
    w[list(bfm.MP_INNER_LIP)] = 5
    w[list(bfm.MP_OUTER_LIP)] = 5
  else:
    raise ValueError(f"mode must be 'image' or 'video', got {mode!r}")
  w[list(bfm.MP_UNMATCHED)] = 0
  return w


def landmarks_to_224(lms_px, height: int, width: int, official_aspect_bug: bool = False) -> np.ndarray:
  """[...,≥468,2] pixel landmarks -> [...,468,2] in the 224 frame with v up. Both axes are divided by H/224 (the
  official fit assumes square frames); with a non-square image and official_aspect_bug=False x is divided by
  W/224 instead (the official image fit reads the width from shape[0], i.e. uses H for x too)."""
  lms = np.asarray(lms_px, np.float64)[..., :468, :].copy()
  lms[..., 1] = height - lms[..., 1]
  sx = (height if official_aspect_bug else width) / 224.0
  lms[..., 0] /= sx
  lms[..., 1] /= height / 224.0
  return lms.astype(np.float32)


def landmarks_from_224(lm224, height: int, width: int, official_aspect_bug: bool = False) -> np.ndarray:
  """Inverse of `landmarks_to_224`: 224-frame (u, v_up) -> image pixels (x right, y down)."""
  lm = np.asarray(lm224, np.float64).copy()
  lm[..., 0] *= (height if official_aspect_bug else width) / 224.0
  lm[..., 1] = height - lm[..., 1] * height / 224.0
  return lm


def project_keypoints(basis, id_coeff, exp_coeff, euler, trans) -> jax.Array:
  """`compute_for_landmark_fit`: keypoints posed, z_cam = 10 − z, perspective -> (u, v_up) [...,K,2]."""
  pts = bfm.apply_pose(bfm.shape_from_coeffs(*basis, id_coeff, exp_coeff), euler, trans)
  return bfm.project_224(bfm.to_camera(pts))


def _lap(x):
  """Temporal Laplacian: mean over channels and time of (x_t − ½x_{t−1} − ½x_{t+1})², edge replication."""
  x = x.reshape(x.shape[0], -1)
  p = jnp.concatenate([x[:1], x, x[-1:]], 0)
  return jnp.mean((p[1:-1] - 0.5 * p[:-2] - 0.5 * p[2:]) ** 2)


def _loss_parts(params, lms, weights, basis, lambdas):
  t = lms.shape[0]
  ids = jnp.broadcast_to(params["id"], (t, bfm.ID_DIM))
  proj = project_keypoints(basis, ids, params["exp"], params["euler"], params["trans"])
  lan = jnp.mean(weights[None, :, None] * (proj - lms) ** 2)
  reg = lambdas["id"] * jnp.mean(params["id"] ** 2) + lambdas["exp"] * jnp.mean(params["exp"] ** 2)
  lap = (_lap(params["id"]) + _lap(params["exp"]) + 0.3 * _lap(params["euler"]) + 0.3 * _lap(params["trans"]))
  return lan, lan + reg + lambdas["lap"] * lap


@functools.partial(jax.jit, static_argnames=("global_id", "steps_a", "steps_b"))
def _fit(lms, weights, basis, lambdas, *, global_id: bool, steps_a: int = 200, steps_b: int = 200, lr: float = 0.1):
  t = lms.shape[0]
  params = {"id": jnp.zeros((1 if global_id else t, bfm.ID_DIM)), "exp": jnp.zeros((t, bfm.EXP_DIM)),
            "euler": jnp.zeros((t, 3)), "trans": jnp.zeros((t, 3))}
  opt_frame, opt_idexp = optax.adam(lr), optax.adam(lr)  # torch Adam defaults: betas (0.9, 0.999), eps 1e-8
  split = lambda p: ({"euler": p["euler"], "trans": p["trans"]}, {"id": p["id"], "exp": p["exp"]})
  frame_p, idexp_p = split(params)
  s_frame, s_idexp = opt_frame.init(frame_p), opt_idexp.init(idexp_p)

  def stage_a(_, c):
    frame_p, s_frame = c
    g = jax.grad(lambda fp: _loss_parts({**fp, **idexp_p}, lms, weights, basis, lambdas)[0])(frame_p)
    u, s_frame = opt_frame.update(g, s_frame, frame_p)
    return optax.apply_updates(frame_p, u), s_frame

  frame_p, s_frame = jax.lax.fori_loop(0, steps_a, stage_a, (frame_p, s_frame))

  def stage_b(_, c):
    frame_p, idexp_p, s_frame, s_idexp = c
    gf, gi = jax.grad(lambda fp, ip: _loss_parts({**fp, **ip}, lms, weights, basis, lambdas)[1],
                      argnums=(0, 1))(frame_p, idexp_p)
    u, s_idexp = opt_idexp.update(gi, s_idexp, idexp_p)
    idexp_p = optax.apply_updates(idexp_p, u)
    u, s_frame = opt_frame.update(gf, s_frame, frame_p)
    return optax.apply_updates(frame_p, u), idexp_p, s_frame, s_idexp

  frame_p, idexp_p, _, _ = jax.lax.fori_loop(0, steps_b, stage_b, (frame_p, idexp_p, s_frame, s_idexp))
  out = {**frame_p, **idexp_p}
  lan, total = _loss_parts(out, lms, weights, basis, lambdas)
  return out, lan, total


@functools.partial(jax.jit, static_argnames=("steps_a", "steps_b"))
def _fit_images(lms, weights, basis, lambdas, *, steps_a: int, steps_b: int):
  """Independent image fits, vmapped over the leading axis of lms [B,1,468,2] (compiled once per B)."""
  return jax.vmap(lambda l: _fit(l, weights, basis, lambdas, global_id=True, steps_a=steps_a, steps_b=steps_b))(lms)


def _basis(model: bfm.FaceModel):
  return tuple(jnp.asarray(a) for a in bfm.keypoint_basis(model, model.mp468))


def fit_video(lms_px, model: bfm.FaceModel, height: int, width: Optional[int] = None, id_mode: str = "global",
              steps=(200, 200)) -> dict:
  """Video objective over all T frames jointly. lms_px [T,≥468,2] pixels of H×W frames.
  Returns {'id' [1,80] ('global') or [T,80], 'exp' [T,64], 'euler' [T,3], 'trans' [T,3]} float32 numpy, plus
  'lm_err_px' [T] (mean reprojection error over the matched points, pixels) and 'loss'."""
  width = width or height
  lms = jnp.asarray(landmarks_to_224(lms_px, height, width))
  w = jnp.asarray(landmark_weights("video"))
  lam = {k: jnp.float32(v) for k, v in VIDEO_LAMBDAS[id_mode].items()}
  out, lan, total = _fit(lms, w, _basis(model), lam, global_id=(id_mode == "global"), steps_a=steps[0],
                         steps_b=steps[1])
  res = {k: np.asarray(v, np.float32) for k, v in out.items()}
  res["lm_err_px"] = reprojection_error_px(model, res, lms_px, height, width)
  res["loss"] = float(total)
  return res


def fit_images(lms_px, model: bfm.FaceModel, height: int, width: Optional[int] = None,
               official_aspect_bug: bool = False, steps=(200, 200)) -> dict:
  """Image objective, each image fitted independently (vmapped). lms_px [B,≥468,2] (or [≥468,2]).
  Returns {'id' [B,80], 'exp' [B,64], 'euler' [B,3], 'trans' [B,3], 'lm_err_px' [B]}."""
  width = width or height
  lms_px = np.asarray(lms_px)
  single = lms_px.ndim == 2
  lms_px = lms_px[None] if single else lms_px
  lms = jnp.asarray(landmarks_to_224(lms_px, height, width, official_aspect_bug))[:, None]  # [B,1,468,2]
  w = jnp.asarray(landmark_weights("image"))
  lam = {k: jnp.float32(v) for k, v in IMAGE_LAMBDAS.items()}
  out, _, _ = _fit_images(lms, w, _basis(model), lam, steps_a=steps[0], steps_b=steps[1])
  res = {k: np.asarray(v[:, 0], np.float32) for k, v in out.items()}
  res["lm_err_px"] = np.array([reprojection_error_px(model, {k: v[i:i + 1] for k, v in res.items()}, lms_px[i:i + 1],
                                                     height, width, official_aspect_bug)[0]
                               for i in range(lms_px.shape[0])])
  return res


def reprojection_error_px(model, coeffs, lms_px, height, width, official_aspect_bug=False) -> np.ndarray:
  """[T] mean Euclidean distance (image pixels) between fitted and detected points, unmatched points excluded."""
  t = np.asarray(coeffs["exp"]).shape[0]
  ids = np.broadcast_to(np.asarray(coeffs["id"]), (t, bfm.ID_DIM))
  proj = np.asarray(project_keypoints(_basis(model), ids, coeffs["exp"], coeffs["euler"], coeffs["trans"]))
  px = landmarks_from_224(proj, height, width, official_aspect_bug)
  valid = landmark_weights("image") > 0
  d = np.linalg.norm(px - np.asarray(lms_px)[:, :468], axis=-1)[:, valid]
  return d.mean(-1)


def timed(fn, *a, **k):
  """(result, seconds) helper for reports."""
  t0 = time.time()
  r = fn(*a, **k)
  return r, time.time() - t0
