import numpy as np
import pytest

from r3p.data import pipeline
from r3p.data.synthetic import SyntheticTalkingHeads


def test_items_deterministic_and_shaped():
  ds = SyntheticTalkingHeads(size=32, n_items=8)
  a, b = ds[3], ds[3]
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert a["ref_img"].shape == (32, 32, 3) and a["tgt_camera"].shape == (25,)
  assert a["cond_src"].min() >= -1 and a["cond_src"].max() <= 1
  assert not np.array_equal(ds[3]["tgt_img"], ds[4]["tgt_img"])
  with pytest.raises(IndexError, match="out of range"):
    ds.codes(8)


def test_iterator_state_resumes_same_order():
  ds = pipeline.make_dataset(SyntheticTalkingHeads(size=32, n_items=12), global_batch=4, seed=3)
  it = iter(ds)
  next(it)
  state = it.get_state()
  want = [next(it)["ref_yaw"] for _ in range(4)]  # crosses an epoch boundary (12 items / 4)
  it2 = iter(ds)
  it2.set_state(state)
  got = [next(it2)["ref_yaw"] for _ in range(4)]
  for w, g in zip(want, got):
    np.testing.assert_array_equal(w, g)


def test_process_split_concatenates_to_global_batch():
  src = SyntheticTalkingHeads(size=32, n_items=12)
  full = next(iter(pipeline.make_dataset(src, global_batch=4, seed=1, process_index=0, process_count=1)))
  parts = [next(iter(pipeline.make_dataset(src, global_batch=4, seed=1, process_index=i, process_count=2)))
           for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([p["ref_yaw"] for p in parts]), full["ref_yaw"])


class _Bad:
  def __len__(self):
    return 4

  def __getitem__(self, i):
    if i == 2:
      raise OSError("truncated")
    return {"x": np.zeros(2, np.float32)}


def test_bad_record_is_named():
  it = iter(pipeline.make_dataset(_Bad(), global_batch=4, seed=0, name="clips"))
  with pytest.raises(Exception, match="clips: record 2"):
    next(it)


def test_torso_items_for_htb_sr():
  ds = SyntheticTalkingHeads(size=32, n_items=8, torso=True)
  it = ds[1]
  assert it["ref_com_img"].shape == (32, 32, 3) and it["ref_segmap"].shape == (32, 32, 6)
  np.testing.assert_array_equal(it["ref_segmap"].sum(-1), 1.0)              # one-hot
  assert 0 < it["tgt_torso_mask"].mean() < 0.5
  kp = it["ref_kp"]
  assert kp.shape == (68, 3) and np.all(np.abs(kp[:, :2]) <= 1) and np.all(kp[:, 2] == 0)
  assert kp[8, 1] > kp[27, 1] and kp[0, 0] < kp[16, 0]                       # chin below the nose; jaw ends L/R
  face = it["ref_segmap"][..., 3] > 0
  # the head is drawn over the torso and background (soft edges aside)
  assert np.median(np.abs(it["ref_com_img"][face] - it["ref_img"][face])) < 1e-3
  # the head items are unchanged by torso=True
  plain = SyntheticTalkingHeads(size=32, n_items=8)[1]
  for k in plain:
    np.testing.assert_array_equal(plain[k], it[k])
