"""Parity handlers of the audio kinds on every shared fixture case of those kinds (tolerances: each fixture's own,
from its fixture.json / README; see r3p/parity_kinds/<kind>.py). hubert_chunked (41 s of HuBERT-large) is slow."""
import json
import os

import pytest

from tests.conftest import FIXTURES

KINDS = ("audio_features", "hubert_large", "hubert_chunked", "a2m_vae", "a2m_vae_train", "syncnet")
SLOW_KINDS = {"hubert_chunked"}
FOLDERS = ("audio_features", "hubert_large", "a2m_vae", "syncnet")


def _cases():
  out = []
  for folder in FOLDERS:
    root = FIXTURES / folder
    if not root.is_dir():
      out.append(pytest.param(None, None, id=f"{folder}-missing",
                              marks=pytest.mark.skip(reason=f"shared fixture folder missing: {root}")))
      continue
    for case in sorted(os.listdir(root)):
      fj = root / case / "fixture.json"
      if not fj.exists():
        continue
      kind = json.loads(fj.read_text())["kind"]
      if kind not in KINDS:
        continue
      marks = [pytest.mark.slow] if kind in SLOW_KINDS else []
      out.append(pytest.param(kind, str(root / case), id=f"{kind}-{case}", marks=marks))
  return out


@pytest.mark.parametrize("kind,case_dir", _cases())
def test_parity_case(kind, case_dir):
  import importlib
  res = importlib.import_module(f"r3p.parity_kinds.{kind}").run(case_dir)
  failed = {k: (r.max_abs, r.tol) for k, r in res.outputs.items() if not r.passed}
  assert res.passed and not failed, failed
  assert res.outputs  # something was compared


def test_parity_cli_runs_an_audio_case(capsys):
  from r3p import parity
  case = FIXTURES / "syncnet"
  if not case.is_dir():
    pytest.skip(f"shared fixture folder missing: {case}")
  assert parity.main(["--json", str(case)]) == 0
  lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
  assert lines and all(ln["pass"] and ln["kind"] == "syncnet" for ln in lines)
