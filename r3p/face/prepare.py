"""Source-portrait and driving-video preprocessing (PIPELINE.md §4.1, §7.3), and its command line.

    python -m r3p.face.prepare --image PORTRAIT --out DIR [--bfm_dir D] [--landmarker F] [--segmenter F]
    python -m r3p.face.prepare --video DRIVING.mp4 --out DIR [--bfm_dir D] [--landmarker F]

Public API used by the inference pipeline (arrays NHWC float32, images in [−1, 1], 512²):
  - `prepare_source(image, model, landmarker_path, segmenter_path=None)` -> dict with img (= ref_head_img),
    ref_gt_img, cond_cano, cond_src, ref_torso_img, bg_img, segmap (one-hot [1,512,512,6]), kp_s [1,68,3],
    camera [1,25], id/exp/euler/trans of the source fit, lm478.
  - `render_driving(model, id, exp, euler, trans, ...)` -> cond_tgt [T,512,512,3], kp_d [T,68,3], camera [T,25]
    (and the source-side `cond_src` of the official driver: the SECC of the first driving expression).
  - `fit_driving_video(video, model, landmarker_path)` -> per-frame id/exp/euler/trans, lm478, camera.
"""
from __future__ import annotations

import argparse
import math
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Optional

import numpy as np

from r3p.face import bfm, fit, landmarks, secc, segment

SIZE = 512
MIN_SIDE = 64
MAX_ASPECT = 4.0
SEGMENTER_NAMES = ("selfie_multiclass_256x256.tflite", "selfie_segmentation.tflite")


class PrepareError(RuntimeError):
  pass


def _resize(img, size=SIZE):
  import cv2

  return cv2.resize(img, (size, size))  # cv2 default bilinear, aspect not kept (as the official loader)


def check_image(img: np.ndarray, name: str):
  h, w = img.shape[:2]
  if min(h, w) < MIN_SIDE or max(h, w) / min(h, w) > MAX_ASPECT:
    raise PrepareError(f"{name}: image of {w}×{h} px is unusable (need both sides ≥ {MIN_SIDE} px and an aspect "
                       f"ratio ≤ {MAX_ASPECT:g})")


def square_on_face(img: np.ndarray, lm: landmarks.Landmarker, name: str) -> np.ndarray:
  """Non-square input: the largest square containing the face centre (clamped inside the image). r3p's fix of the
  official behaviour, which stretches the whole image to 512×512."""
  h, w = img.shape[:2]
  if h == w:
    return img
  p = lm.detect_image(img, name)
  s = min(h, w)
  cx, cy = 0.5 * (p[:, 0].min() + p[:, 0].max()), 0.5 * (p[:, 1].min() + p[:, 1].max())
  x0 = int(np.clip(round(cx - s / 2), 0, w - s))
  y0 = int(np.clip(round(cy - s / 2), 0, h - s))
  return img[y0:y0 + s, x0:x0 + s]


def crop_on_face_area(img: np.ndarray, lm: landmarks.Landmarker, name: str, min_face_area_percent: float = 0.2):
  """`crop_img_on_face_area_percent`: on the 512² stretched image, face area = landmark-bbox area / 512². At or
  above the threshold the (uncropped) image is kept; below it a square of side int(√(bbox_area/threshold)) centred
  on the bbox (shrunk to fit) is cropped from the 512² image and resized back to 512. Returns (image, cropped?)."""
  im512 = _resize(img)
  p = lm.detect_image(im512, name)
  area = (p[:, 0].max() - p[:, 0].min()) * (p[:, 1].max() - p[:, 1].min()) / SIZE ** 2
  if area >= min_face_area_percent:
    return img, False
  q = p.astype(int)
  x0, x1, y0, y1 = q[:, 0].min(), q[:, 0].max(), q[:, 1].min(), q[:, 1].max()
  target = int((((x1 - x0) * (y1 - y0)) / min_face_area_percent) ** 0.5)
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  shrink = max(0, 2 * max(-(cx - target / 2), cx + target / 2 - SIZE, -(cy - target / 2), cy + target / 2 - SIZE))
  hw = math.floor(target - shrink)
  crop = im512[int(cy - hw / 2):int(cy + hw / 2), int(cx - hw / 2):int(cx + hw / 2)]
  return _resize(crop), True


def to_pm1(img_u8) -> np.ndarray:
  return (np.asarray(img_u8, np.float32) - 127.5) / 127.5


def find_segmenter(path=None) -> Optional[pathlib.Path]:
  """--segmenter, else $R3P_MEDIAPIPE_DIR/{multiclass, binary} model if present, else None."""
  if path:
    p = pathlib.Path(path)
    if not p.is_file():
      raise PrepareError(f"segmentation model not found: {p}")
    return p
  d = os.environ.get(landmarks.ENV_DIR)
  if d:
    for n in SEGMENTER_NAMES:
      if (pathlib.Path(d) / n).is_file():
        return pathlib.Path(d) / n
  return None


def prepare_source(image, model: bfm.FaceModel, landmarker_path=None, segmenter_path=None, *, name: str = "image",
                   official_aspect: bool = False, min_face_area_percent: float = 0.2, renderer=None,
                   progress: bool = False, log=print) -> dict:
  """Source portrait (path or uint8 RGB array) -> network inputs and intermediates (see module docstring).

  official_aspect=True reproduces the official handling of non-square inputs (stretched to 512², and the image fit
  reading the width from shape[0]); the default crops a face-centred square first.
  """
  from tqdm import tqdm

  seg_path = find_segmenter(segmenter_path)
  if seg_path is None:
    raise PrepareError("no segmentation model: pass --segmenter (selfie_multiclass_256x256.tflite or "
                       f"selfie_segmentation.tflite) or put one in ${landmarks.ENV_DIR}")
  if isinstance(image, (str, os.PathLike)):
    name = str(image)
    img = landmarks.read_image_rgb(image)
  else:
    img = np.asarray(image, np.uint8)
  check_image(img, name)
  lm = landmarks.Landmarker(landmarker_path, pick_largest=True)
  try:
    if not official_aspect:
      img = square_on_face(img, lm, name)
    img, cropped = crop_on_face_area(img, lm, name, min_face_area_percent)
    if cropped and log:
      log(f"r3p.face: face covers less than {min_face_area_percent:.0%} of the image: cropped around it")
    # The official fit reads the cropped file at its own resolution (un-resized when no crop happened); landmarks on
    # the 512² image give the same 224-frame coordinates up to resampling.
    aspect_bug = official_aspect and img.shape[0] != img.shape[1]
    fit_h, fit_w = img.shape[:2]
    lm_fit = lm.detect_image(img, name)
    im512 = _resize(img)
    lm512 = lm.detect_image(im512, name)
  finally:
    lm.close()
  if lm.faces_seen > 1 and log:
    log(f"r3p.face: {name}: {lm.faces_seen} faces detected, using the largest")
  # The progress bar starts once the input is known to be usable, so that bad inputs print one error line only.
  bar = tqdm(total=3, desc="prepare (segmentation, fit, SECC)", disable=not progress)

  seg_model = segment.Segmenter(seg_path)
  try:
    seg = seg_model.segment(im512, lm512)
    seg_mode = seg_model.mode
  finally:
    seg_model.close()
  head_u8, _ = segment.masked_image(im512, seg, "head")
  torso_u8, torso_mask = segment.inpaint_torso(im512, seg)
  bg_u8 = segment.extract_background(im512[None], seg[None])
  bar.update(1)

  coeffs = fit.fit_images(lm_fit, model, fit_h, fit_w, official_aspect_bug=aspect_bug)
  src = {k: coeffs[k][:1] for k in ("id", "exp", "euler", "trans")}
  bar.update(1)

  renderer = renderer or secc.SeccRenderer(model, SIZE)
  # Rendered one at a time, as the official driver does (it matters for the face-0 mask quirk).
  both = np.concatenate([renderer.render(src["id"], np.zeros_like(src["exp"]))[0],
                         renderer.render(src["id"], src["exp"])[0]])
  kp_s = np.asarray(bfm.kp68_for_network(model, src["id"], src["exp"], src["euler"], src["trans"]))
  camera = np.asarray(bfm.eg3d_camera(src["euler"], src["trans"]))
  bar.update(1)
  bar.close()
  return {
      "img": to_pm1(head_u8)[None], "ref_gt_img": to_pm1(im512)[None], "cond_cano": both[:1], "cond_src": both[1:],
      "ref_torso_img": to_pm1(torso_u8)[None], "bg_img": to_pm1(bg_u8)[None], "segmap": segment.onehot(seg)[None],
      "kp_s": kp_s.astype(np.float32), "camera": camera.astype(np.float32), **src,
      "lm478": lm512.astype(np.float32), "lm_err_px": coeffs["lm_err_px"].astype(np.float32),
      "seg_classes": seg, "seg_mode": seg_mode, "torso_mask": torso_mask, "synthetic_model": model.synthetic,
      "images_u8": {"input": im512, "head": head_u8, "torso": torso_u8, "bg": bg_u8},
  }


def render_driving(model: bfm.FaceModel, id_coeff, exp, euler, trans, *, renderer=None, smooth_camera: bool = True,
                   smooth_kp: bool = True, blink_schedule: Optional[dict] = None, official_off_by_one: bool = True):
  """Target-side inputs for T frames: cond_tgt [T,512,512,3] (zero-pose SECC of (id, exp[t]), blink-edited on the
  scheduled frames), kp_d [T,68,3] (projected with the given pose, ×2−1, clamped; box-smoothed k=7), camera [T,25]
  (EG3D convention, rotation-mean smoothed k=7), and cond_src [1,512,512,3] = SECC of exp[0] (the official driver's
  source SECC is the first driving frame's expression)."""
  exp = np.asarray(exp, np.float32).reshape(-1, bfm.EXP_DIM)
  t = exp.shape[0]
  ids = np.broadcast_to(np.asarray(id_coeff, np.float32).reshape(-1, bfm.ID_DIM), (t, bfm.ID_DIM))
  euler = np.asarray(euler, np.float32).reshape(t, 3)
  trans = np.asarray(trans, np.float32).reshape(t, 3)
  renderer = renderer or secc.SeccRenderer(model, SIZE)
  cond_tgt, _ = renderer.render(ids, exp)
  if blink_schedule:
    cond_tgt = secc.apply_blinks(cond_tgt, blink_schedule)
  kp = np.asarray(bfm.kp68_for_network(model, ids, exp, euler, trans, official_off_by_one))
  if smooth_kp:
    kp = bfm.smooth_features_xd(kp, 7)
  cam = np.asarray(bfm.eg3d_camera(euler, trans))
  if smooth_camera:
    cam = bfm.smooth_camera_sequence(cam, 7)
  return {"cond_tgt": cond_tgt, "kp_d": kp.astype(np.float32), "camera": cam.astype(np.float32),
          "cond_src": cond_tgt[:1] if not blink_schedule else renderer.render(ids[:1], exp[:1])[0]}


def fit_driving_video(video, model: bfm.FaceModel, landmarker_path=None, *, anti_smooth_factor: float = 20.0,
                      progress: bool = False) -> dict:
  """Driving video (path or uint8 RGB frames [T,H,W,3], square) -> {'id' [1,80], 'exp' [T,64], 'euler' [T,3],
  'trans' [T,3], 'lm478' [T,478,2], 'camera' [T,25] (unsmoothed), 'lm_err_px' [T]}."""
  if isinstance(video, (str, os.PathLike)):
    name = str(video)
    frames, fps = landmarks.read_video_rgb(video)
  else:
    name, frames, fps = "video", np.asarray(video, np.uint8), 25.0
  h, w = frames.shape[1:3]
  if h != w:
    raise PrepareError(f"{name}: driving video frames must be square (got {w}×{h}); crop it first")
  lms = landmarks.video_landmarks(frames, landmarker_path, fps, anti_smooth_factor, name=name, progress=progress)
  res = fit.fit_video(lms, model, h, w)
  res["lm478"] = lms.astype(np.float32)
  res["camera"] = np.asarray(bfm.eg3d_camera(res["euler"], res["trans"]), np.float32)
  return res


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _save_png(path, rgb):
  import cv2

  if rgb.dtype != np.uint8:
    rgb = np.clip((np.asarray(rgb) + 1) * 127.5, 0, 255).astype(np.uint8)
  cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def _draw_points(img_u8, pts_list, colors, radius=1):
  import cv2

  out = np.ascontiguousarray(img_u8[..., ::-1].copy())
  for pts, col in zip(pts_list, colors):
    for x, y in np.asarray(pts):
      cv2.circle(out, (int(round(x)), int(round(y))), radius, col[::-1], -1)
  return out[..., ::-1]


def _fitted_points_px(model, coeffs, h, w):
  t = np.asarray(coeffs["exp"]).shape[0]
  ids = np.broadcast_to(np.asarray(coeffs["id"]), (t, bfm.ID_DIM))
  proj = np.asarray(fit.project_keypoints(fit._basis(model), ids, coeffs["exp"], coeffs["euler"], coeffs["trans"]))
  return fit.landmarks_from_224(proj, h, w)


def _write_image_outputs(tmp: pathlib.Path, res: dict, model: bfm.FaceModel):
  u8 = res["images_u8"]
  _save_png(tmp / "input_512.png", u8["input"])
  fitted = _fitted_points_px(model, res, SIZE, SIZE)[0]
  _save_png(tmp / "landmarks.png", _draw_points(u8["input"], [res["lm478"][:468], fitted[model.mp468_valid]],
                                                [(0, 255, 0), (255, 0, 0)]))
  _save_png(tmp / "segmap.png", segment.encode_segmap(res["seg_classes"]))
  _save_png(tmp / "head.png", u8["head"])
  _save_png(tmp / "torso_inpainted.png", u8["torso"])
  _save_png(tmp / "background.png", u8["bg"])
  _save_png(tmp / "secc_cano.png", res["cond_cano"][0])
  _save_png(tmp / "secc_src.png", res["cond_src"][0])
  keys = ("img", "ref_gt_img", "cond_cano", "cond_src", "ref_torso_img", "bg_img", "segmap", "kp_s", "camera", "id",
          "exp", "euler", "trans", "lm478", "lm_err_px")
  np.savez_compressed(tmp / "prepared.npz", **{k: res[k] for k in keys}, seg_mode=np.array(res["seg_mode"]),
                      synthetic_model=np.array(res["synthetic_model"]))


def _write_video_outputs(tmp: pathlib.Path, res: dict, model: bfm.FaceModel, video_path):
  frames, _ = landmarks.read_video_rgb(video_path)
  h, w = frames.shape[1:3]
  fitted = _fitted_points_px(model, {k: res[k][:1] if k != "id" else res[k] for k in ("id", "exp", "euler", "trans")},
                             h, w)[0]
  _save_png(tmp / "frame0_landmarks.png", _draw_points(frames[0], [res["lm478"][0, :468], fitted[model.mp468_valid]],
                                                       [(0, 255, 0), (255, 0, 0)]))
  np.savez_compressed(tmp / "driving.npz", **{k: res[k] for k in ("id", "exp", "euler", "trans", "lm478", "camera",
                                                                  "lm_err_px")},
                      camera_smoothed=bfm.smooth_camera_sequence(res["camera"], 7),
                      synthetic_model=np.array(model.synthetic))


def _silence_native_stderr():
  """MediaPipe/TFLite log from C++ straight to fd 2; send fd 2 to /dev/null and keep Python's stderr (errors,
  progress bar) on the original stream, so that a failure prints one line."""
  try:
    sys.stderr.flush()
    keep = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    sys.stderr = os.fdopen(keep, "w", buffering=1)
  except OSError:
    pass


def main(argv=None) -> int:
  os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  ap = argparse.ArgumentParser(prog="python -m r3p.face.prepare", description=__doc__.split("\n\n")[0])
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--image", help="source portrait (PNG/JPEG)")
  src.add_argument("--video", help="driving video (.mp4, square frames)")
  ap.add_argument("--out", required=True, help="output folder (written atomically)")
  ap.add_argument("--bfm_dir", help="folder with BFM_model_front.mat + index_mp468_from_mesh35709.npy "
                                    "(default: the synthetic face model)")
  ap.add_argument("--landmarker", help=f"face_landmarker.task (default: ${landmarks.ENV_DIR}/face_landmarker.task)")
  ap.add_argument("--segmenter", help="selfie_multiclass_256x256.tflite (official 6 classes) or "
                                      "selfie_segmentation.tflite (binary + landmark split)")
  ap.add_argument("--official_aspect", action="store_true", help="reproduce the official stretching of non-square "
                                                                 "inputs")
  ap.add_argument("--verbose", action="store_true", help="keep MediaPipe/TFLite native log lines on stderr")
  args = ap.parse_args(argv)
  if not args.verbose:
    _silence_native_stderr()
  out = pathlib.Path(args.out)
  tmp = None
  try:
    task = landmarks.resolve_task_path(args.landmarker)
    model = bfm.default_face_model(args.bfm_dir, task)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    if args.image:
      res = prepare_source(args.image, model, task, args.segmenter, official_aspect=args.official_aspect,
                           progress=True)
      print(f"r3p.face: segmentation mode: {res['seg_mode']}; landmark fit error "
            f"{float(res['lm_err_px'][0]):.2f} px")
      _write_image_outputs(tmp, res, model)
    else:
      res = fit_driving_video(args.video, model, task, progress=True)
      print(f"r3p.face: {res['exp'].shape[0]} frames fitted, mean landmark error {res['lm_err_px'].mean():.2f} px")
      _write_video_outputs(tmp, res, model, args.video)
    if out.exists():
      shutil.rmtree(out)
    os.replace(tmp, out)
    tmp = None
    print(f"r3p.face: wrote {out}")
    return 0
  except (landmarks.FaceDetectionError, bfm.FaceModelError, segment.SegmentationError, PrepareError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  finally:
    if tmp is not None and tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())
