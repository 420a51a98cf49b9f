"""train.state.stage_module dispatches generically by `cfg.stage` to train.stages.<name>."""
import ml_collections
import pytest

from train.state import stage_module


def test_dispatch_by_name():
  m = stage_module(ml_collections.ConfigDict({"stage": "motion_adapter"}))
  assert m.__name__ == "train.stages.motion_adapter"
  for fn in ("build_model", "param_group", "g_loss", "init_lambdas"):
    assert callable(getattr(m, fn))


def test_unknown_stage_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown stage 'nope'"):
    stage_module(ml_collections.ConfigDict({"stage": "nope"}))
  with pytest.raises(ValueError, match="module name"):
    stage_module(ml_collections.ConfigDict({"stage": "../x"}))
