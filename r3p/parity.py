"""Parity of r3p against the official network's recorded numbers.

    python -m r3p.parity [--json] DIR [DIR ...]

Each DIR is a fixture case folder (holding `fixture.json`) or a folder of such cases. The kind named in
`fixture.json` selects the handler `r3p.parity_kinds.<kind>`; the handler rebuilds the weights from the case's
seeded-weights spec, runs r3p on the case's inputs (and recorded random draws) and compares every reference
output. Prints per key max|Δ|, mean|Δ| and PASS/FAIL; exit status 0 only if every case passes.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback

from r3p.parity_kinds import CaseResult, read_fixture_json


def find_cases(paths: list[str]) -> list[str]:
  cases = []
  for p in paths:
    p = os.path.normpath(p)
    if os.path.exists(os.path.join(p, "fixture.json")):
      cases.append(p)
    elif os.path.isdir(p):
      subs = sorted(os.path.join(p, d) for d in os.listdir(p) if os.path.exists(os.path.join(p, d, "fixture.json")))
      if not subs:
        raise SystemExit(f"r3p.parity: {p}: no fixture.json here or in its sub-folders")
      cases.extend(subs)
    else:
      raise SystemExit(f"r3p.parity: {p}: no such folder")
  return cases


def run_case(case_dir: str) -> CaseResult:
  meta = read_fixture_json(case_dir)
  kind = meta.get("kind")
  if not kind or not kind.replace("_", "").isalnum():
    raise ValueError(f"{case_dir}/fixture.json: bad kind {kind!r}")
  try:
    mod = importlib.import_module(f"r3p.parity_kinds.{kind}")
  except ModuleNotFoundError as e:
    if e.name == f"r3p.parity_kinds.{kind}":
      raise ValueError(f"{case_dir}: fixture kind {kind!r} is not supported by this version of r3p") from None
    raise
  return mod.run(case_dir)


def format_case(res: CaseResult, seconds: float) -> str:
  lines = [f"== {res.kind}/{res.case}  ({seconds:.1f} s)"]
  w = max([len(k) for k in res.outputs] + [8])
  lines.append(f"  {'output':<{w}}  {'max|Δ|':>10}  {'mean|Δ|':>10}  {'tolerance':<30} result")
  for k, r in res.outputs.items():
    lines.append(f"  {k:<{w}}  {r.max_abs:10.3e}  {r.mean_abs:10.3e}  {r.tol:<30} {'PASS' if r.passed else 'FAIL'}")
  for n in res.notes:
    lines.append(f"  note: {n}")
  lines.append(f"  {'PASS' if res.passed else 'FAIL'}")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m r3p.parity", description=__doc__.split("\n\n")[0])
  ap.add_argument("dirs", nargs="+", metavar="DIR", help="fixture case folders (or folders of cases)")
  ap.add_argument("--json", action="store_true", help="print one JSON object per case instead of tables")
  args = ap.parse_args(argv)
  ok = True
  for case_dir in find_cases(args.dirs):
    t0 = time.perf_counter()
    try:
      res = run_case(case_dir)
    except Exception as e:  # one broken case must not hide the others
      ok = False
      meta = {}
      try:
        meta = read_fixture_json(case_dir)
      except Exception:
        pass
      msg = f"{type(e).__name__}: {e}"
      if os.environ.get("R3P_DEBUG"):
        traceback.print_exc()
      if args.json:
        print(json.dumps({"kind": meta.get("kind"), "case": os.path.basename(case_dir), "outputs": {},
                          "pass": False, "error": msg}), flush=True)
      else:
        print(f"== {meta.get('kind')}/{os.path.basename(case_dir)}\n  ERROR {msg}\n  FAIL", flush=True)
      continue
    ok &= res.passed
    if args.json:
      print(json.dumps(res.to_json()), flush=True)
    else:
      print(format_case(res, time.perf_counter() - t0), flush=True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
