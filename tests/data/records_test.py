"""TFDS array_record clip dataset: build (no TensorFlow), read back, Grain pipeline, bad records named."""
import glob
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from r3p.data import pipeline, records, sources, tfds_clips
from r3p.data.synthetic import SyntheticTalkingHeads, render_clip

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE, CLIPS, FRAMES = 32, 3, 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  out = tmp_path_factory.mktemp("clips")
  path = tfds_clips.build(str(out), tfds_clips.config_for("synthetic", size=SIZE, n_clips=CLIPS, n_frames=FRAMES))
  return str(out), path


def test_tensorflow_not_needed(dataset):
  assert "tensorflow" not in sys.modules  # tfds imported lazily-TF modules only


def test_records_round_trip(dataset):
  _, path = dataset
  r = records.FrameRecords(path)
  assert len(r) == CLIPS * FRAMES and r.size == SIZE and r.clip_lengths == [FRAMES] * CLIPS
  clip = render_clip(0, 1, FRAMES, SIZE)
  rec = r.frame(1, 4)
  assert int(rec["clip"]) == 1 and int(rec["frame"]) == 4
  # uint8 storage: ≤ half a quantisation step (1/127.5) from the float render
  np.testing.assert_allclose(tfds_clips.from_uint8(rec["image"]), clip["image"][4], atol=0.5 / 127.5 + 1e-6)
  np.testing.assert_allclose(tfds_clips.from_uint8(rec["secc"]), clip["secc"][4], atol=0.5 / 127.5 + 1e-6)
  np.testing.assert_array_equal(rec["camera"], clip["camera"][4])
  np.testing.assert_array_equal(rec["kp"], clip["kp"][4])
  assert rec["audio"].shape == (2, 80) and set(np.unique(rec["segmap"])) <= set(range(6))


def test_pairs_have_the_synthetic_keys(dataset):
  out, _ = dataset
  pairs = records.ArrayRecordPairs(out, n_items=8, seed=0, torso=True)  # the data_dir resolves to the dataset
  item = pairs[5]
  want = SyntheticTalkingHeads(size=SIZE, n_items=1, torso=True)[0]
  assert set(item) == set(want)
  for k in want:
    assert item[k].shape == want[k].shape and item[k].dtype == want[k].dtype, k
  clip, a, b = pairs.frames_of(5)
  assert clip == 5 % CLIPS and a != b
  assert item["ref_segmap"].sum(-1).min() == 1.0  # one-hot


def test_grain_pipeline_sharding_and_resume(dataset):
  out, _ = dataset
  src = records.ArrayRecordPairs(out, n_items=12, seed=0)
  full = next(iter(pipeline.make_dataset(src, global_batch=4, seed=1, process_index=0, process_count=1)))
  parts = [next(iter(pipeline.make_dataset(src, global_batch=4, seed=1, process_index=i, process_count=2)))
           for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([p["tgt_img"] for p in parts]), full["tgt_img"])
  it = iter(pipeline.make_dataset(src, global_batch=4, seed=1))
  next(it)
  state = it.get_state()
  want = [next(it)["tgt_yaw"] for _ in range(4)]
  it2 = iter(pipeline.make_dataset(src, global_batch=4, seed=1))
  it2.set_state(state)
  for w in want:
    np.testing.assert_array_equal(next(it2)["tgt_yaw"], w)


def test_make_source_from_config(dataset):
  out, _ = dataset
  d = ml_collections.ConfigDict(dict(name=f"array_record:{out}", size=SIZE, n_clips=16, n_items=10))
  cfg = ml_collections.ConfigDict(dict(seed=0, data=d))
  assert isinstance(sources.make_source(cfg), records.ArrayRecordPairs)
  cfg.data.name = "synthetic"
  assert isinstance(sources.make_source(cfg), SyntheticTalkingHeads)
  cfg.data.name = "nope"
  with pytest.raises(ValueError, match="unknown data source"):
    sources.make_source(cfg)
  cfg.data.name, cfg.data.size = f"array_record:{out}", 64
  with pytest.raises(ValueError, match="data.size"):
    sources.make_source(cfg)


def _copy(dataset, tmp_path):
  import shutil
  _, path = dataset
  dst = tmp_path / "copy"
  shutil.copytree(path, dst)
  return str(dst), glob.glob(str(dst / "*.array_record-*"))[0]


def test_corrupt_record_is_named(dataset, tmp_path):
  path, shard = _copy(dataset, tmp_path)
  data = bytearray(open(shard, "rb").read())
  mid = len(data) // 2
  for i in range(mid, mid + 256):
    data[i] ^= 0xFF
  open(shard, "wb").write(bytes(data))
  r = records.FrameRecords(path)
  errors = []
  for i in range(len(r)):
    try:
      r[i]
    except pipeline.RecordError as e:
      errors.append(str(e))
  assert errors, "a corrupted chunk went unnoticed"
  assert all(os.path.basename(shard) in e and ": record " in e for e in errors)


def test_truncated_file_is_named(dataset, tmp_path):
  path, shard = _copy(dataset, tmp_path)
  data = open(shard, "rb").read()
  open(shard, "wb").write(data[: len(data) // 3])
  it = iter(pipeline.make_dataset(records.ArrayRecordPairs(path, n_items=4), global_batch=4, seed=0))
  with pytest.raises(pipeline.RecordError, match=r"array_record-00000-of-00001: record \d+ is unreadable"):
    next(it)


def test_build_cli(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "r3p.data.build", "--out", str(tmp_path), "--size", "16",
                      "--n_clips", "2", "--n_frames", "3"], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "--config.data.name=array_record:" in r.stdout
  assert len(records.FrameRecords(str(tmp_path))) == 6
  bad = subprocess.run([sys.executable, "-m", "r3p.data.build", "--out", str(tmp_path / "v"), "--source",
                        "clip.mp4"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "only 'synthetic'" in bad.stderr


def test_default_config_resolves_to_the_registered_one(tmp_path):
  default = tfds_clips.config_for("synthetic")
  assert tfds_clips.config_arg(default) == default.name
  b = tfds_clips.R3pTalkingHeads(config=tfds_clips.config_arg(default), data_dir=str(tmp_path),
                                 file_format="array_record")
  assert b.builder_config.n_frames == 32 and b.info.features["image"].shape == (64, 64, 3)
  other = tfds_clips.config_for("synthetic", size=16)
  assert tfds_clips.config_arg(other) is other
