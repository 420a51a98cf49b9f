"""MFCC edge cases (python_speech_features conventions)."""
import numpy as np
import pytest

from eval import mfcc


def test_frame_count_and_silence():
  c = mfcc.mfcc(np.zeros(16000, np.int16))
  assert c.shape == (1 + int(np.ceil((16000 - 400) / 160)), 13) and np.isfinite(c).all()
  assert mfcc.mfcc(np.ones(100, np.int16)).shape == (1, 13)


def test_bad_input():
  with pytest.raises(ValueError, match="mono 1-D"):
    mfcc.mfcc(np.zeros((100, 2)))
  with pytest.raises(ValueError, match="empty"):
    mfcc.mfcc(np.zeros(0))
