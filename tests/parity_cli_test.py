import json

import pytest

from r3p import parity


def test_unknown_kind_is_a_clear_failure(tmp_path, capsys):
  (tmp_path / "fixture.json").write_text(json.dumps({"kind": "no_such_kind", "case": "x"}))
  assert parity.main(["--json", str(tmp_path)]) == 1
  out = json.loads(capsys.readouterr().out.strip())
  assert out["pass"] is False and "not supported" in out["error"]


def test_missing_folder_exits_with_message(tmp_path):
  with pytest.raises(SystemExit, match="no such folder"):
    parity.main([str(tmp_path / "nope")])
