"""`python -m r3p.infer` / `r3p infer`: a portrait and a driving audio (or video, or coefficients) -> an mp4.

    r3p infer --random_weights --src_img Macron.png --drv_aud Obama_5s.wav --out_name out.mp4
    r3p infer --torso_ckpt checkpoints/240210_real3dportrait_orig/secc2plane_torso_orig \
              --a2m_ckpt checkpoints/240210_real3dportrait_orig/audio2secc_vae \
              --hubert_ckpt checkpoints/hubert-large-ls960-ft --src_img P.png --drv_aud A.wav --out_name out.mp4

Flags and meanings follow the official `inference/real3d_infer.py` (PIPELINE.md §7.1), with these differences:
`--seed` defaults to 0 (the official seeds from the clock); `--drv_pose` defaults to 'static' (the official CLI
defaults to its bundled May_5s.mp4); `--out_mode` defaults to 'final' and adds 'alpha' (RGBA PNG frames);
`--out_name` is required. r3p adds `--chunk` (frames per compiled call), `--devices N|all` (each chunk sharded
over local devices), `--dtype float32|bfloat16` (network activations), `--max_frames`, `--random_weights`,
`--landmarker`/`--segmenter` (MediaPipe model files, or $R3P_MEDIAPIPE_DIR) and `--bfm_dir` (BFM 2009 files; the
synthetic face model without it). A bad input prints one `r3p infer: error: ...` line and exits with status 2,
leaving no output file.
"""
from __future__ import annotations

import argparse
import os
import sys


def str2bool(v) -> bool:
  if isinstance(v, bool):
    return v
  s = str(v).strip().lower()
  if s in ("true", "1", "yes", "y"):
    return True
  if s in ("false", "0", "no", "n"):
    return False
  raise argparse.ArgumentTypeError(f"expected True or False, got {v!r}")


def build_parser(prog: str = "r3p infer") -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  ap.add_argument("--src_img", required=True, help="source portrait (PNG/JPEG)")
  ap.add_argument("--drv_aud", required=True,
                  help="driving input: audio (.wav/.mp3/...), a video (.mp4: expressions fitted from it) or "
                       "coefficients (.npy dict / .npz with 'exp')")
  ap.add_argument("--drv_pose", default="static", help="'static', a pose video (.mp4) or a .npy/.npz with euler/trans")
  ap.add_argument("--bg_img", default="", help="background image ('' = extracted from the source)")
  ap.add_argument("--blink_mode", default="period", choices=("period", "none"))
  ap.add_argument("--temperature", type=float, default=0.2, help="A2M prior scale")
  ap.add_argument("--mouth_amp", type=float, default=0.45, help="A2M mouth amplitude")
  ap.add_argument("--head_torso_threshold", type=float, default=None, help="default: the config's 0.9")
  ap.add_argument("--out_name", required=True, help="output .mp4 (a PNG folder of that name for --out_mode alpha)")
  ap.add_argument("--out_mode", default="final", choices=("final", "concat_debug", "alpha"))
  ap.add_argument("--map_to_init_pose", type=str2bool, default=True)
  ap.add_argument("--seed", type=int, default=0, help="seed of every random draw (the official uses the clock)")
  ap.add_argument("--min_face_area_percent", type=float, default=0.2)
  ap.add_argument("--ckpt_dir", help="r3p checkpoint folder from `python -m r3p.convert` (replaces the three below)")
  ap.add_argument("--torso_ckpt", help="secc2plane_torso checkpoint (.ckpt or its folder)")
  ap.add_argument("--a2m_ckpt", help="audio2secc_vae checkpoint (.ckpt or its folder)")
  ap.add_argument("--hubert_ckpt", help="HuBERT-large (transformers folder or weights file)")
  ap.add_argument("--random_weights", action="store_true",
                  help="seeded random weights + synthetic face model (smoke test: meaningless pictures)")
  ap.add_argument("--landmarker", help="face_landmarker.task (default $R3P_MEDIAPIPE_DIR/face_landmarker.task)")
  ap.add_argument("--segmenter", help="selfie_multiclass_256x256.tflite or selfie_segmentation.tflite "
                                      "(default: from $R3P_MEDIAPIPE_DIR)")
  ap.add_argument("--bfm_dir", help="BFM 2009 folder (default: the synthetic face model)")
  ap.add_argument("--chunk", type=int, default=16,
                  help="frames per compiled network call (rounded up to a multiple of --devices)")
  ap.add_argument("--devices", default="1",
                  help="local devices to shard each chunk over (batch axis; params replicated); 'all' = every one")
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                  help="activation dtype of the portrait network (params stay float32)")
  ap.add_argument("--max_frames", type=int, default=None, help="cut the clip to this many frames")
  ap.add_argument("--no_progress", action="store_true")
  return ap


def options_from_args(args) -> dict:
  return dict(drv_pose=args.drv_pose, bg_img=args.bg_img or None, blink_mode=args.blink_mode,
              temperature=args.temperature, mouth_amp=args.mouth_amp, head_torso_threshold=args.head_torso_threshold,
              out_mode=args.out_mode, map_to_init_pose=args.map_to_init_pose, seed=args.seed,
              min_face_area_percent=args.min_face_area_percent, chunk=args.chunk, max_frames=args.max_frames,
              devices=args.devices)


def main(argv=None, prog: str = "r3p infer") -> int:
  os.environ.setdefault("GLOG_minloglevel", "2")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  args = build_parser(prog).parse_args(argv)
  from r3p import api

  def fail(msg: str) -> int:
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 2

  try:
    opts = api.Options(**options_from_args(args))
    opts.check()
    for p, what in ((args.src_img, "--src_img"), (args.drv_aud, "--drv_aud"), (args.bg_img, "--bg_img")):
      if p and not os.path.isfile(p):
        return fail(f"{what} {p}: file not found")
    if args.random_weights:
      portrait = api.Portrait.random_weights(args.seed, landmarker=args.landmarker, segmenter=args.segmenter,
                                             bfm_dir=args.bfm_dir, dtype=args.dtype)
    elif args.ckpt_dir:
      portrait = api.Portrait.from_checkpoints(args.ckpt_dir, landmarker=args.landmarker, segmenter=args.segmenter,
                                               bfm_dir=args.bfm_dir, dtype=args.dtype)
    else:
      if not (args.torso_ckpt and args.a2m_ckpt and args.hubert_ckpt):
        return fail("--ckpt_dir, or --torso_ckpt, --a2m_ckpt and --hubert_ckpt, are required (or --random_weights for a smoke "
                    "test with meaningless pictures)")
      portrait = api.Portrait.from_checkpoints(args.torso_ckpt, args.a2m_ckpt, args.hubert_ckpt,
                                               landmarker=args.landmarker, segmenter=args.segmenter,
                                               bfm_dir=args.bfm_dir, dtype=args.dtype)
    path = portrait.generate(args.src_img, args.drv_aud, args.out_name, progress=not args.no_progress,
                             **options_from_args(args))
  except api.user_errors() as e:
    return fail(api.error_line(e))
  print(f"{prog}: wrote {path}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main(prog="python -m r3p.infer"))
