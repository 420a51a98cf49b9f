"""Evaluate a generated talking-portrait video: PSNR, SSIM, LPIPS, FID, CSIM, AED, APD, LMD, Sync-C/D.

    python -m eval.metrics --pred OUT.mp4 [--gt GT.mp4] [--src_img SRC.png] [--audio A.wav]
        [--fid_ref DIR|stats.npz] [--metrics psnr,ssim,lpips,fid,csim,aed,apd,lmd,sync] --out results.json
        [--weights_dir DIR | --random_weights] [--landmarker face_landmarker.task] [--bfm_dir DIR] [--plot]

Frames stream through fixed-size jitted batches (memory flat in video length). Writes `results.json`
({"summary", "frames", "skipped", "unavailable", "versions"}), a per-frame CSV beside it, and with --plot a PNG of
the per-frame curves. Without --metrics every metric whose inputs and weights are present is computed, the others
are listed under "unavailable" with what they need; a metric named in --metrics that cannot run is an error.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np

ALL = ("psnr", "ssim", "lpips", "fid", "csim", "aed", "apd", "lmd", "sync")
PER_FRAME = ("psnr", "ssim", "lpips", "csim", "aed", "apd", "lmd")
NETS = {"lpips": "lpips_{net}", "fid": "fid_inception", "csim": "arcface", "sync": "syncnet_v2"}
FACE = ("csim", "aed", "apd", "lmd", "sync")


class MetricsError(RuntimeError):
  pass


def _versions() -> dict:
  import importlib.metadata as md
  out = {}
  for p in ("jax", "flax", "numpy", "scipy", "mediapipe", "imageio-ffmpeg"):
    try:
      out[p] = md.version(p)
    except md.PackageNotFoundError:
      pass
  try:
    out["r3p"] = md.version("r3p")
  except md.PackageNotFoundError:
    pass
  return out


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


class FaceTracker:
  """MediaPipe landmarks of single frames ([478, 2] pixels, or None when there is no / more than one face)."""

  def __init__(self, task_path):
    from r3p.face.landmarks import Landmarker
    self.lm = Landmarker(task_path)

  def __call__(self, frame):
    from r3p.face.landmarks import FaceDetectionError
    try:
      return self.lm.detect_image(frame).astype(np.float32)
    except FaceDetectionError:
      return None

  def close(self):
    self.lm.close()


def _sync_boxes(boxes: list, kernel: int = 13) -> np.ndarray:
  """Per-frame (x, y, s) face boxes, gaps filled from the nearest earlier (else later) face, median-filtered as
  syncnet_python smooths its tracks."""
  from scipy import signal
  arr = np.array([b if b is not None else (np.nan,) * 3 for b in boxes], np.float64)
  ok = np.isfinite(arr[:, 0])
  if not ok.any():
    raise MetricsError("sync: no face found in any frame")
  idx = np.where(ok, np.arange(len(arr)), -1)
  idx = np.maximum.accumulate(idx)
  idx[idx < 0] = np.argmax(ok)
  arr = arr[idx]
  k = min(kernel, len(arr) if len(arr) % 2 == 1 else len(arr) - 1)
  if k >= 3:
    arr = np.stack([signal.medfilt(arr[:, i], kernel_size=k) for i in range(3)], 1)
  return arr


def sync_crop(frame_rgb, box, crop_scale: float = 0.4):
  """syncnet_python's crop_video: box (x, y centre, s = half size), padded with 110, 224x224, BGR."""
  import cv2
  x, y, s = box
  bsi = int(s * (1 + 2 * crop_scale))
  fr = np.pad(frame_rgb[..., ::-1], ((bsi, bsi), (bsi, bsi), (0, 0)), mode="constant", constant_values=110)
  my, mx = y + bsi, x + bsi
  face = fr[int(my - s):int(my + s * (1 + 2 * crop_scale)), int(mx - s * (1 + crop_scale)):int(mx + s * (1 + crop_scale))]
  if face.size == 0:
    face = fr
  return cv2.resize(face, (224, 224), interpolation=cv2.INTER_LINEAR)


def _iter_image_dir(folder: str, size: int = 299):
  import cv2
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".webp")))
  if not names:
    raise MetricsError(f"--fid_ref {folder}: no images (.png/.jpg) in the folder")
  for n in names:
    img = cv2.imread(os.path.join(folder, n), cv2.IMREAD_COLOR)
    if img is None:
      raise MetricsError(f"--fid_ref {folder}/{n}: cannot decode the image")
    yield cv2.resize(img[..., ::-1], (size, size), interpolation=cv2.INTER_AREA)


def plan(args) -> tuple[list[str], dict[str, str]]:
  """The metrics to run and {metric: reason} for those that cannot (error when explicitly requested)."""
  from eval.weights import WeightsUnavailable, weights_path
  explicit = args.metrics is not None
  wanted = [m.strip() for m in (args.metrics or ",".join(ALL)).split(",") if m.strip()]
  bad = [m for m in wanted if m not in ALL]
  if bad:
    raise MetricsError(f"unknown metric(s) {', '.join(bad)} (choose from {', '.join(ALL)})")
  unavailable = {}
  for m in wanted:
    reason = None
    if m in ("psnr", "ssim", "lpips", "aed", "apd", "lmd") and not args.gt:
      reason = "needs --gt (ground-truth / driving video)"
    elif m == "fid" and not (args.gt or args.fid_ref):
      reason = "needs --gt or --fid_ref (reference video, image folder or stats .npz)"
    elif m == "csim" and not args.src_img:
      reason = "needs --src_img (the source portrait)"
    elif m == "sync" and not args.audio and not args.pred_has_audio:
      reason = "needs --audio (the pred video has no audio track)"
    if reason is None and m in FACE:
      from r3p.face.landmarks import FaceDetectionError, resolve_task_path
      try:
        resolve_task_path(args.landmarker)
      except FaceDetectionError as e:
        reason = str(e)
    if reason is None and m in NETS and not args.random_weights:
      try:
        weights_path(NETS[m].format(net=args.lpips_net), args.weights_dir)
      except WeightsUnavailable as e:
        reason = str(e)
    if reason:
      if explicit:
        raise MetricsError(f"{m}: {reason}")
      unavailable[m] = reason
  return [m for m in wanted if m not in unavailable], unavailable


def run(args) -> dict:
  import jax
  from tqdm import tqdm

  from eval import fid as fid_lib
  from eval import image_metrics, video_io
  from eval.weights import build_model

  pinfo = video_io.probe(args.pred)
  args.pred_has_audio = pinfo["has_audio"]
  metrics, unavailable = plan(args)
  if not metrics:
    raise MetricsError("nothing to compute: " + "; ".join(f"{k}: {v}" for k, v in unavailable.items()))
  if args.random_weights:
    _log("eval.metrics: RANDOM WEIGHTS (--random_weights): every network metric is meaningless, for smoke tests only")
  n = pinfo["frames"]
  ginfo = video_io.probe(args.gt) if args.gt else None
  gt_size = None
  if ginfo:
    if ginfo["frames"] != n or abs(ginfo["fps"] - pinfo["fps"]) > 1e-3:
      msg = (f"--pred has {n} frames at {pinfo['fps']:g} fps, --gt {ginfo['frames']} at {ginfo['fps']:g} fps")
      if not args.align:
        raise MetricsError(msg + " (pass --align to compare the first min(N) frames)")
      _log(f"eval.metrics: {msg}; --align: comparing the first {min(n, ginfo['frames'])} frames")
      n = min(n, ginfo["frames"])
    if ginfo["size"] != pinfo["size"]:
      if not args.align:
        raise MetricsError(f"--pred is {pinfo['size'][0]}x{pinfo['size'][1]}, --gt {ginfo['size'][0]}x"
                           f"{ginfo['size'][1]} (pass --align to rescale pred to the gt size)")
      gt_size = ginfo["size"]
  B = int(args.batch)
  per = {m: np.full(n, np.nan) for m in PER_FRAME if m in metrics}
  summary, skipped, notes = {}, {}, []
  seed = int(args.seed)

  # ---- networks (built once; jitted fixed-shape batch functions)
  lp_fn = inc_fn = arc_fn = None
  if "lpips" in metrics:
    from eval import lpips
    lp_fn = lpips.distance_fn(build_model(f"lpips_{args.lpips_net}", args.weights_dir, args.random_weights, seed))
  if "fid" in metrics:
    from eval import inception
    inc_fn = inception.features_fn(build_model("fid_inception", args.weights_dir, args.random_weights, seed))
  face_needed = any(m in metrics for m in FACE)
  tracker = FaceTracker(args.landmarker) if face_needed else None
  src_emb = None
  if "csim" in metrics:
    from eval import arcface, face_align
    from r3p.face.landmarks import read_image_rgb
    arc_fn = arcface.embed_fn(build_model("arcface", args.weights_dir, args.random_weights, seed))
    src = read_image_rgb(args.src_img)
    lm = tracker(src)
    if lm is None:
      raise MetricsError(f"--src_img {args.src_img}: no single face found")
    crop = face_align.norm_crop(src, lm[list(face_align.MEDIAPIPE_5PT)])
    src_emb = np.asarray(arc_fn(np.repeat(crop[None], B, 0)))[0]
  face_model = None
  if "aed" in metrics or "apd" in metrics:
    from r3p.face import bfm
    face_model = bfm.default_face_model(args.bfm_dir, None, log=_log)
    if not args.bfm_dir:
      notes.append("AED/APD with the synthetic face model (no --bfm_dir): not comparable with BFM numbers")

  stats_pred = fid_lib.RunningStats() if "fid" in metrics else None
  fid_ref_from_gt = "fid" in metrics and not args.fid_ref
  stats_ref = fid_lib.RunningStats() if fid_ref_from_gt else None
  boxes = [] if "sync" in metrics else None

  pred_frames = video_io.iter_frames(args.pred, limit=n, size=gt_size)
  gt_frames = video_io.iter_frames(args.gt, limit=n) if args.gt else None
  pairs = zip(pred_frames, gt_frames) if gt_frames is not None else ((p, p) for p in pred_frames)
  t0 = time.perf_counter()
  timing = {}

  def timed(name, fn, *a):
    s = time.perf_counter()
    out = fn(*a)
    jax.block_until_ready(out) if out is not None else None
    timing[name] = timing.get(name, 0.0) + time.perf_counter() - s
    return out

  bar = tqdm(total=n, unit="frame", desc="eval", disable=args.quiet)
  start = 0
  batch_p, batch_g = [], []

  def flush(bp, bg):
    nonlocal start
    k = len(bp)
    pad = B - k
    P = np.stack(bp + [bp[-1]] * pad)
    G = np.stack(bg + [bg[-1]] * pad)
    sl = slice(start, start + k)
    if "psnr" in per or "ssim" in per:
      _, p, s = timed("psnr_ssim", image_metrics.psnr_ssim_uint8, G, P)
      if "psnr" in per:
        per["psnr"][sl] = p[:k]
      if "ssim" in per:
        per["ssim"][sl] = s[:k]
    if lp_fn is not None:
      per["lpips"][sl] = np.asarray(timed("lpips", lp_fn, P, G))[:k]
    if inc_fn is not None:
      stats_pred.update(np.asarray(timed("fid", inc_fn, P))[:k])
      if stats_ref is not None:
        stats_ref.update(np.asarray(timed("fid", inc_fn, G))[:k])
    if face_needed:
      _faces(P[:k], G[:k], sl)
    start += k
    bar.update(k)

  def _faces(P, G, sl):
    s = time.perf_counter()
    lp = [tracker(f) for f in P]
    need_gt = any(m in metrics for m in ("aed", "apd", "lmd"))
    lg = [tracker(f) for f in G] if need_gt else [None] * len(P)
    timing["landmarks"] = timing.get("landmarks", 0.0) + time.perf_counter() - s
    if boxes is not None:
      for l in lp:
        if l is None:
          boxes.append(None)
        else:
          lo, hi = l.min(0), l.max(0)
          boxes.append(((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, max(hi[0] - lo[0], hi[1] - lo[1]) / 2))
    idx = np.arange(sl.start, sl.stop)
    if "csim" in metrics:
      from eval import face_align
      ok = [i for i, l in enumerate(lp) if l is not None]
      if ok:
        crops = np.stack([face_align.norm_crop(P[i], lp[i][list(face_align.MEDIAPIPE_5PT)]) for i in ok])
        crops = np.concatenate([crops, np.repeat(crops[-1:], B - len(ok), 0)])
        e = np.asarray(timed("csim", arc_fn, crops))[:len(ok)]
        per["csim"][idx[ok]] = e @ src_emb
    both = [i for i in range(len(P)) if lp[i] is not None and lg[i] is not None]
    if "lmd" in metrics and both:
      from eval import lmd
      w_p, w_g = P.shape[2], G.shape[2]
      per["lmd"][idx[both]] = lmd.lmd_per_frame(lmd.mouth_points(np.stack([lp[i] for i in both]), w_p),
                                                lmd.mouth_points(np.stack([lg[i] for i in both]), w_g))
    if ("aed" in metrics or "apd" in metrics) and both:
      from eval import aed_apd
      s = time.perf_counter()
      lm_all = np.stack([lp[i] for i in both] + [lg[i] for i in both])
      h, w = P.shape[1], P.shape[2]
      pad = 2 * B - len(lm_all)  # fixed shape: one compiled fit for every batch
      lm_all = np.concatenate([lm_all, np.repeat(lm_all[-1:], pad, 0)])
      c = aed_apd.fit_coeffs(lm_all, face_model, h, w)
      k = len(both)
      cp = {key: c[key][:k] for key in ("exp", "euler", "trans")}
      cg = {key: c[key][k:2 * k] for key in ("exp", "euler", "trans")}
      a, p = aed_apd.distances(cp, cg, args.aed_norm)
      if "aed" in per:
        per["aed"][idx[both]] = a
      if "apd" in per:
        per["apd"][idx[both]] = p
      timing["aed_apd_fit"] = timing.get("aed_apd_fit", 0.0) + time.perf_counter() - s

  try:
    for p, g in pairs:
      batch_p.append(p)
      batch_g.append(g)
      if len(batch_p) == B:
        flush(batch_p, batch_g)
        batch_p, batch_g = [], []
    if batch_p:
      flush(batch_p, batch_g)
  finally:
    bar.close()
  if start == 0:
    raise MetricsError(f"{args.pred}: no frame could be decoded")
  n = start

  # ---- summaries of per-frame metrics
  for m, v in per.items():
    v = v[:n]
    fin = v[np.isfinite(v)] if m != "psnr" else v[~np.isnan(v)]
    if m in ("csim", "aed", "apd", "lmd"):
      skipped[m] = int(np.isnan(v).sum())
      if skipped[m]:
        _log(f"eval.metrics: {m}: {skipped[m]} of {n} frames without a (single) face were skipped")
    if m == "psnr":
      finite = v[np.isfinite(v)]
      skipped["psnr_identical_frames"] = int(np.isinf(v).sum())
      summary[m] = float(finite.mean()) if finite.size else float("inf")
    elif fin.size:
      summary[m] = float(fin.mean())
    else:
      unavailable[m] = "no frame with a face in both videos" if m != "csim" else "no frame with a face"

  # ---- FID
  if "fid" in metrics:
    try:
      if args.fid_ref and args.fid_ref.endswith(".npz"):
        mu2, s2 = fid_lib.load_statistics(args.fid_ref)
      else:
        if args.fid_ref:
          if not os.path.isdir(args.fid_ref):
            raise fid_lib.FIDError(f"--fid_ref {args.fid_ref}: neither a folder of images nor a .npz file")
          stats_ref = fid_lib.RunningStats()
          for b, k in video_io.iter_batches(_iter_image_dir(args.fid_ref), B):
            stats_ref.update(np.asarray(timed("fid", inc_fn, b))[:k])
        mu2, s2 = stats_ref.mu, stats_ref.sigma
      if args.save_fid_stats:
        stats_pred.save(args.save_fid_stats)
      summary["fid"] = fid_lib.frechet_distance(stats_pred.mu, stats_pred.sigma, mu2, s2)
    except fid_lib.FIDError as e:
      unavailable["fid"] = str(e)
      _log(f"eval.metrics: fid: {e}")

  # ---- Sync (second pass over the pred video: crops need the smoothed face track)
  if "sync" in metrics:
    try:
      summary.update(_sync(args, boxes[:n], n, seed, timing))
    except (MetricsError, ValueError, video_io.InputError) as e:
      unavailable["sync"] = str(e)
      _log(f"eval.metrics: sync: {e}")
  if tracker is not None:
    tracker.close()
  if not summary:
    raise MetricsError("nothing could be computed: " + "; ".join(f"{k}: {v}" for k, v in unavailable.items()))
  wall = time.perf_counter() - t0
  res = {"summary": summary, "frames": int(n), "skipped": skipped, "unavailable": unavailable,
         "versions": _versions()}
  if args.random_weights:
    res["random_weights"] = True
  if notes:
    res["notes"] = notes
  res["_per_frame"] = {m: v[:n] for m, v in per.items()}
  res["_timing"] = {"wall_s": wall, "frames_per_s": n / wall, **{k: round(v, 3) for k, v in timing.items()}}
  return res


def _sync(args, boxes, n, seed, timing) -> dict:
  from eval import mfcc as mfcc_lib
  from eval import syncnet_v2, video_io
  from eval.weights import build_model
  audio = video_io.read_audio_16k(args.audio or args.pred)
  if np.abs(audio.astype(np.int32)).max() == 0:
    raise MetricsError("the audio is silent (all samples zero): Sync-C/D are undefined")
  nw = syncnet_v2.num_windows(n, len(audio))
  if nw < 1:
    raise MetricsError(f"too short for SyncNet: {n} frames / {len(audio) / 16000:.2f} s of audio "
                       f"(needs 6 frames and 0.24 s)")
  model = build_model("syncnet_v2", args.weights_dir, args.random_weights, seed)
  lip, aud = syncnet_v2.embed_fns(model)
  bx = _sync_boxes(boxes)
  s = time.perf_counter()
  SB = 20
  cc = syncnet_v2.mfcc_windows(mfcc_lib.mfcc(audio, 16000), nw)
  ae = []
  for st in range(0, nw, SB):
    idx = np.minimum(np.arange(st, st + SB), nw - 1)
    ae.append(np.asarray(aud(cc[idx]))[:min(SB, nw - st)])
  ve, win, ring = [], [], []
  for i, fr in enumerate(video_io.iter_frames(args.pred, limit=n)):
    ring.append(sync_crop(fr, bx[i]))
    if len(ring) > 5:
      ring.pop(0)
    if len(ring) == 5 and i - 4 < nw:
      win.append(np.stack(ring))
      if len(win) == SB:
        ve.append(np.asarray(lip(np.stack(win))))
        win = []
  if win:
    k = len(win)
    win += [win[-1]] * (SB - k)
    ve.append(np.asarray(lip(np.stack(win)))[:k])
  v = np.concatenate(ve)[:nw]
  r = syncnet_v2.sync_scores(v, np.concatenate(ae)[:nw])
  timing["sync"] = time.perf_counter() - s
  return {"sync_c": float(r["conf"]), "sync_d": float(r["minval"]), "sync_offset": int(r["offset"])}


def write_outputs(res: dict, args) -> None:
  per = res.pop("_per_frame")
  timing = res.pop("_timing")
  res["timing"] = timing
  out = args.out
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  csv_path = args.csv or os.path.splitext(out)[0] + ".csv"
  tmp_csv = csv_path + ".tmp"
  with open(tmp_csv, "w", newline="") as f:
    w = csv.writer(f)
    cols = list(per)
    w.writerow(["frame"] + cols)
    for i in range(res["frames"]):
      w.writerow([i] + ["" if np.isnan(per[c][i]) else f"{per[c][i]:.6g}" for c in cols])
  if args.plot:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = [c for c in per if np.isfinite(per[c]).any()]
    fig, axes = plt.subplots(max(len(cols), 1), 1, figsize=(10, 2 * max(len(cols), 1)), squeeze=False)
    for ax, c in zip(axes[:, 0], cols):
      ax.plot(np.arange(res["frames"]), per[c], lw=0.8)
      ax.set_ylabel(c)
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    png = os.path.splitext(out)[0] + ".png"
    fig.savefig(png + ".tmp.png", dpi=100)
    os.replace(png + ".tmp.png", png)
  tmp = out + ".tmp"
  with open(tmp, "w") as f:
    json.dump(res, f, indent=1, allow_nan=True)
  os.replace(tmp_csv, csv_path)
  os.replace(tmp, out)


def print_table(res: dict) -> None:
  print(f"{'metric':<12} {'value':>12}")
  for k, v in res["summary"].items():
    print(f"{k:<12} {v:>12.5g}" if isinstance(v, float) else f"{k:<12} {v:>12}")
  for k, v in res["unavailable"].items():
    print(f"{k:<12} {'n/a':>12}  ({v})")
  for k, v in res["skipped"].items():
    if v:
      print(f"{'':<12} skipped {v} frame(s) for {k}")
  print(f"frames: {res['frames']}")


def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m eval.metrics", description=__doc__.split("\n\n")[0])
  ap.add_argument("--pred", required=True, help="generated video (.mp4)")
  ap.add_argument("--gt", help="ground-truth / driving video (same length and fps)")
  ap.add_argument("--src_img", help="source portrait (CSIM)")
  ap.add_argument("--audio", help="driving audio for Sync (default: the pred video's audio track)")
  ap.add_argument("--fid_ref", help="FID reference: folder of images or stats .npz (mu, sigma); default --gt")
  ap.add_argument("--save_fid_stats", help="also save the pred's FID statistics to this .npz")
  ap.add_argument("--metrics", help=f"comma list from {','.join(ALL)} (default: all that can run)")
  ap.add_argument("--out", required=True, help="results.json path (a per-frame CSV is written beside it)")
  ap.add_argument("--csv", help="per-frame CSV path (default: OUT with .csv)")
  ap.add_argument("--plot", action="store_true", help="write OUT.png with the per-frame curves")
  ap.add_argument("--weights_dir", help="folder written by `python -m eval.convert_weights`")
  ap.add_argument("--random_weights", action="store_true", help="seeded random networks (smoke tests only)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--landmarker", help="MediaPipe face_landmarker.task (or set R3P_MEDIAPIPE_DIR)")
  ap.add_argument("--bfm_dir", help="BFM folder for AED/APD (default: the synthetic face model)")
  ap.add_argument("--lpips_net", default="alex", choices=("alex", "vgg"))
  ap.add_argument("--aed_norm", default="l1", choices=("l1", "l2"))
  ap.add_argument("--batch", type=int, default=8, help="frames per jitted batch (fixed shape)")
  ap.add_argument("--align", action="store_true",
                  help="compare the first min(N) frames when lengths/fps differ, rescale pred to the gt size")
  ap.add_argument("--quiet", action="store_true", help="no progress bar")
  return ap


def main(argv=None) -> int:
  import warnings
  args = build_parser().parse_args(argv)
  # ffmpeg runs as a subprocess next to JAX's threads; its fork() is safe here (exec follows at once)
  warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
  from eval.video_io import InputError
  from eval.weights import WeightsUnavailable
  try:
    res = run(args)
  except (MetricsError, InputError, WeightsUnavailable, ValueError, RuntimeError) as e:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"eval.metrics: error: {msg}", file=sys.stderr)
    return 2
  write_outputs(res, args)
  print_table(res)
  return 0


if __name__ == "__main__":
  sys.exit(main())
