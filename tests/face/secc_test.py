"""Tests of SECC rendering (vs the brute-force rasterizer) and blink editing."""
import random

import numpy as np
import pytest

from r3p.face import bfm, rasterize, secc

S = 96


@pytest.fixture(scope="module")
def model():
  return bfm.synthetic_face_model(resolution=(36, 28))


@pytest.fixture(scope="module")
def rendered(model):
  r = secc.SeccRenderer(model, S)
  exp = np.zeros((2, 64), np.float32)
  exp[1, 0] = 1.0
  idc = np.random.RandomState(0).randn(1, 80).astype(np.float32) * 0.5
  img, mask = r.render(idc, exp)
  return model, idc, exp, img, mask


def test_secc_matches_brute_force(rendered):
  model, idc, exp, img, mask = rendered
  assert img.shape == (2, S, S, 3) and mask.shape == (2, S, S, 1)
  faces = model.render_faces()
  for i in range(2):
    v = np.asarray(bfm.shape_from_coeffs(model.mean_shape, model.id_base, model.exp_base, idc[0], exp[i]))
    pix = np.asarray(rasterize.project_to_pixels(bfm.to_camera(v), S))
    rid, rb, _ = rasterize.rasterize_reference(pix, faces, S, S)
    fg = (rid > 0) if i == 0 else (rid >= 0)  # official quirk: packed face 0 (first mesh of a batch) is background
    ref = np.where(fg[..., None], np.einsum("hwi,hwic->hwc", rb, model.ncc[faces[np.maximum(rid, 0)]]), 0) * 2 - 1
    np.testing.assert_array_equal(mask[i, ..., 0] > 0, fg)
    np.testing.assert_allclose(img[i], ref, atol=1e-5)
  assert img.min() == -1.0 and img.max() <= 1.0
  assert 0.2 < mask.mean() < 0.8
  assert not np.allclose(img[0], img[1])  # expression changes the SECC


def test_eye_holes_and_background(rendered):
  model, _, _, img, _ = rendered
  h = S
  box = img[0, h // 4:h // 2, h // 4:3 * h // 4]
  assert (np.all(box == -1, axis=-1)).sum() > 0  # eye holes are background-coloured
  assert len(model.render_faces()) == len(model.tri) - len(model.eye_faces)


def test_blink(rendered):
  img = rendered[3][0]
  q = secc.blink_eye_for_secc(img, 0.0)
  np.testing.assert_allclose(q, np.floor((img + 1) / 2 * 255) / 127.5 - 1, atol=1e-6)
  h = S
  holes = lambda x: np.all(x[h // 4:h // 2, h // 4:3 * h // 4] == -1, axis=-1).sum()
  closed, half = secc.blink_eye_for_secc(img, 1.0), secc.blink_eye_for_secc(img, 0.5)
  assert holes(closed) < holes(q) and holes(half) <= holes(q)
  assert holes(closed) <= 0.2 * holes(q)
  np.testing.assert_array_equal(closed[:h // 5], q[:h // 5])  # nothing changes away from the eyes
  with pytest.raises(ValueError):
    secc.blink_eye_for_secc(img, 1.5)


def test_periodic_blink_schedule():
  sch = secc.periodic_blink_schedule(300, random.Random(0))
  assert sch[0] == 0.0 and 125 in sch and 250 in sch
  assert all(0 <= p <= 1 for p in sch.values())
  assert max(sch) < 299
  frames = np.full((3, 8, 8, 3), 0.5, np.float32)
  out = secc.apply_blinks(frames, {1: 0.5})
  np.testing.assert_array_equal(out[0], frames[0])


def test_face0_mask_quirk_only_in_first_mesh_of_a_batch(model):
  import dataclasses
  # Move a triangle near the nose (visible at the image centre) to the front of the face list.
  cen = model.mean_shape[model.tri].mean(1)
  k = int(np.argmin(((cen[:, :2] - [0.0, -0.1]) ** 2).sum(1) - 10 * (cen[:, 2] > 0)))
  order = np.concatenate([[k], np.delete(np.arange(len(model.tri)), k)])
  inv = np.argsort(order)
  m = dataclasses.replace(model, tri=model.tri[order], eye_faces=inv[model.eye_faces].astype(np.int32))
  exp = np.zeros((4, 64), np.float32)
  _, mask = secc.SeccRenderer(m, S).render(np.zeros((1, 80)), exp, chunk=2)  # two chunks of 2 identical frames
  hole = (mask[1] > 0) & (mask[0] == 0)
  assert hole.sum() > 0  # frame 0: face 0 is treated as background; frame 1 (second mesh of the chunk): not
  np.testing.assert_array_equal(mask[2], mask[0])  # frame 2 starts a new chunk
  np.testing.assert_array_equal(mask[3], mask[1])
