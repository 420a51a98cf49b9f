"""Parity of eval.face_align (ArcFace 5-point similarity + bilinear warp) against insightface/skimage/cv2."""
from __future__ import annotations

import numpy as np

from r3p.parity_kinds import CaseResult, read_fixture_json


def run(case_dir: str) -> CaseResult:
  from eval import face_align as fa
  from eval._parity import finish, load_npz
  meta = read_fixture_json(case_dir)
  x = load_npz(case_dir, "inputs.npz")
  img, lm = x["image"], x["landmarks"]
  size = int(meta.get("image_size", 112))
  m = fa.similarity_matrix(lm, size)
  warped = np.asarray(fa.warp_affine(img, fa.invert_affine(m), (size, size)))
  pred = {"M": m, "aligned_float": warped,
          "aligned_uint8": np.clip(np.round(warped), 0, 255).astype(np.int64),
          "aligned_cv2_float32": warped, "arcface_dst": fa.arcface_template(size)}
  return finish(case_dir, meta, pred)
