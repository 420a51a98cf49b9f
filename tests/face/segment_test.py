"""Tests of segmentation helpers: colour code, landmark split, torso inpainting, KNN background, binary model."""
import numpy as np
import pytest

from r3p.face import segment
from tests.conftest import shared_path


def _oval_landmarks(cx=64, cy=60, rx=20, ry=28):
  lm = np.zeros((478, 2))
  n = len(segment.MP_FACE_OVAL)
  ang = np.linspace(-np.pi / 2, 1.5 * np.pi, n, endpoint=False)  # from the top (mp 10) clockwise on screen
  lm[list(segment.MP_FACE_OVAL)] = np.stack([cx + rx * np.cos(ang), cy + ry * np.sin(ang)], 1)
  return lm


def test_segmap_colour_code_roundtrip():
  seg = np.random.RandomState(0).randint(0, 6, (7, 9)).astype(np.uint8)
  rgb = segment.encode_segmap(seg)
  assert tuple(rgb[seg == 0][0]) == (255, 255, 255) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(segment.decode_segmap(rgb), seg)
  oh = segment.onehot(seg)
  assert oh.shape == (7, 9, 6) and np.all(oh.sum(-1) == 1)
  assert segment.mode_mask(seg, "head").sum() == np.isin(seg, (1, 3, 5)).sum()


def test_split_person_by_landmarks():
  person = np.zeros((128, 128), bool)
  person[20:, 30:98] = True  # head and shoulders blob
  person[95:, :] = True
  seg = segment.split_person(person, _oval_landmarks())
  assert seg[60, 64] == 3  # face centre
  assert seg[25, 64] == 1  # above the face: hair
  assert seg[95, 64] == 2  # under the chin: neck
  assert seg[120, 5] == 4  # shoulder: clothes
  assert seg[5, 5] == 0


def test_inpaint_torso_extends_clothes_and_neck_upward():
  img = np.full((64, 32, 3), 200, np.uint8)
  seg = np.zeros((64, 32), np.uint8)
  seg[:30, 8:24] = 3  # head
  seg[30:, :] = 4  # clothes right under the head
  torso, mask = segment.inpaint_torso(img, seg)
  # Clothes columns under the head get 9 px copied upward, darkened 0.98^k (uint8 truncation).
  for k in range(9):
    assert torso[30 - k, 10, 0] == int(200 * 0.98 ** k)
  assert mask[22, 10] and not mask[20, 10]
  assert torso[10, 10].sum() == 0 and not mask[5, 2]  # head removed; background outside the mask is 0
  assert mask[40, 2] and torso[40, 2, 0] == 200
  seg2 = seg.copy()
  seg2[30:40, 12:20] = 2  # a neck
  torso2, mask2 = segment.inpaint_torso(img, seg2)
  assert mask2[30 - 40, 14] or mask2[0, 14]  # the neck is extended far up (53 px, clipped at the top)
  assert mask2[5, 14]


def test_knn_background():
  img = np.zeros((40, 40, 3), np.uint8)
  img[..., 0] = np.arange(40)[None]  # colour = column
  seg = np.zeros((40, 40), np.uint8)
  seg[15:25, 15:25] = 3
  bg = segment.extract_background(img[None], seg[None])
  np.testing.assert_array_equal(bg[0, 0], img[0, 0])  # far from the person: kept
  # Brute force: background = pixels > 10 px from the person; every other pixel takes the colour of one of the
  # nearest background pixels (ties allowed).
  yy, xx = np.mgrid[0:40, 0:40]
  fg = np.argwhere(seg != 0)
  dist = np.sqrt(((np.stack([yy, xx], -1)[:, :, None] - fg[None, None]) ** 2).sum(-1)).min(-1)
  bgpix = np.argwhere(dist > 10)
  for r, c in ((20, 20), (17, 20), (12, 30)):
    d = np.sqrt(((bgpix - [r, c]) ** 2).sum(-1))
    near = bgpix[d <= d.min() + 1e-9]
    assert bg[r, c, 0] in img[near[:, 0], near[:, 1], 0]
  with pytest.raises(segment.SegmentationError):
    segment.extract_background(img[None], np.ones((1, 40, 40), np.uint8))


def test_binary_segmenter_on_macron():
  from r3p.face import landmarks
  m = segment.Segmenter(shared_path("assets", "mediapipe", "selfie_segmentation.tflite"))
  assert m.mode == "binary"
  img = landmarks.read_image_rgb(shared_path("assets", "examples", "Macron.png"))
  p = m.person_probability(img)
  assert p.shape == (512, 512) and p[250, 256] > 0.9 and p[20, 20] < 0.1
  with pytest.raises(segment.SegmentationError, match="landmarks"):
    m.segment(img)
