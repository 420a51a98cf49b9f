import pytest

from configs import common, motion_adapter


def test_variants_and_ablation():
  tiny = motion_adapter.get_config("tiny")
  full = motion_adapter.get_config("full")
  assert tiny.model.render_resolution == 32 and full.model.render_resolution == 128
  assert full.optim.lr_g == 1e-4 and full.optim.warmup == 4000 and full.total_steps == 250_000
  assert full.model.n_coarse == full.model.n_fine == 48 and full.model.mit_dims == (32, 64, 160, 256)
  assert motion_adapter.get_config("tiny,ablation=no_reg").loss.density == 0.0
  with pytest.raises(ValueError, match="unknown variant"):
    motion_adapter.get_config("huge")
  with pytest.raises(ValueError, match="unknown config arg"):
    common.parse_arg("foo=1", variant="tiny")


def test_docstring_starts_with_command():
  assert motion_adapter.__doc__.startswith("python -m train.main --config configs/motion_adapter.py:tiny")


def test_lr_schedules_follow_official_gating():
  from train.state import lr_schedules
  o = motion_adapter.get_config("full").optim
  s = lr_schedules(o)
  assert float(s["ma"](0)) == 0.0 and float(s["ma"](2000)) == pytest.approx(5e-5, rel=1e-6)
  assert float(s["decoder"](5999)) == 0.0 and float(s["decoder"](6000)) > 0
  assert float(s["sr"](29999)) == 0.0
  assert float(s["cano"](100)) == pytest.approx(5e-6, rel=1e-6) and float(s["cano"](70_000)) == 0.0
  assert float(s["ma"](10_000)) == pytest.approx(1e-4 * 0.95 ** 2, rel=1e-6)
  o.two_stage_training = False  # else MA stops at start_adv, before the decay reaches the floor
  assert float(lr_schedules(o)["ma"](10_000_000)) == pytest.approx(5e-6, rel=1e-6)  # floor


def test_two_stage_training_trains_only_sr_after_start_adv():
  from train.state import lr_schedules
  o = motion_adapter.get_config("full").optim
  s = lr_schedules(o)
  before, after = o.start_adv - 1, o.start_adv
  assert all(float(s[g](before)) > 0 for g in ("ma", "decoder", "sr"))  # cano already stopped at 70k
  assert [float(s[g](after)) for g in ("cano", "ma", "decoder")] == [0.0, 0.0, 0.0] and float(s["sr"](after)) > 0
  o.two_stage_training = False
  assert float(lr_schedules(o)["ma"](after)) > 0
