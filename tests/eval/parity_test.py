"""The eval parity kinds on the shared fixtures (each case's own tolerances, as `python -m r3p.parity` applies them).

Fast kinds run by default; the network kinds (LPIPS, FID Inception, ArcFace, SyncNet) and FID at dim 2048 (scipy
sqrtm of a 2048x2048 product, minutes on 2 cores) are `slow`. Tolerances: fixture.json["tolerances"] per output.
"""
import json
import os

import pytest

from tests.conftest import FIXTURES

FAST = ("image_metrics", "mfcc", "face_align", "frechet")
SLOW = ("lpips", "fid_inception", "arcface", "syncnet_v2")


def _cases(kinds):
  out = []
  for k in kinds:
    d = FIXTURES / k
    if not d.is_dir():
      out.append(pytest.param(None, marks=pytest.mark.skip(reason=f"shared fixtures missing: {d}"), id=k))
      continue
    for c in sorted(os.listdir(d)):
      p = d / c
      if not (p / "fixture.json").exists():
        continue
      meta = json.loads((p / "fixture.json").read_text())
      slow = k in SLOW or (k == "frechet" and meta.get("dim", 0) > 512)
      out.append(pytest.param(str(p), marks=[pytest.mark.slow] if slow else [], id=f"{k}/{c}"))
  return out


@pytest.mark.parametrize("case_dir", _cases(FAST + SLOW))
def test_parity(case_dir):
  from r3p.parity import format_case, run_case
  res = run_case(case_dir)
  assert res.passed, format_case(res, 0.0)
