"""Sync-C / Sync-D arithmetic (SyncNetInstance.evaluate) on synthetic embeddings, and window bookkeeping."""
import numpy as np

from eval import syncnet_v2 as sn


def test_offset_recovered_from_shifted_embeddings():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(60, 32)).astype(np.float32) + 3
  shift = 4
  v = np.roll(a, shift, axis=0)  # video window i matches audio window i - shift
  r = sn.sync_scores(v, a)
  assert int(r["offset"]) == shift and int(r["minidx"]) == 15 - shift
  assert float(r["conf"]) > 0 and r["dists"].shape == (60, 31)


def test_num_windows_skips_last_window():
  assert sn.num_windows(40, 25600) == 35
  assert sn.num_windows(5, 25600) == 0


def test_mfcc_windows_shape():
  w = sn.mfcc_windows(np.zeros((159, 13)), 35)
  assert w.shape == (35, 13, 20, 1)
