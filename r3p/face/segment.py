"""Portrait segmentation and the segmentation-derived images (PIPELINE.md §4.1).

Classes (MediaPipe multiclass selfie model): 0 background, 1 hair, 2 body skin, 3 face skin, 4 clothes,
5 others/accessories. Two back-ends:

  - "multiclass": the official `selfie_multiclass_256x256.tflite` through MediaPipe ImageSegmenter (category mask),
    as the official code. Supply the file yourself (Apache-2.0, from the MediaPipe model zoo).
  - "binary": the person/background `selfie_segmentation.tflite` (no metadata, run with ai-edge-litert) plus a
    landmark-based split of the person into face skin (inside the MediaPipe face oval), hair (person pixels around
    and above the face, above the jaw), neck (body skin: a band under the chin) and clothes (the rest). There is no
    "others" class. Good enough for the torso inpainting and head image, but not the official segmentation.
Images are uint8 RGB [H,W,3]; class maps are uint8 [H,W].
"""
from __future__ import annotations

import numpy as np

SEG_COLORS = np.array([(255, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (255, 0, 0), (0, 255, 0)],
                      np.uint8)
MODE_CLASSES = {"head": (1, 3, 5), "person": (1, 2, 3, 4, 5), "torso": (2, 4), "torso_with_bg": (0, 2, 4),
                "bg": (0,)}
# MediaPipe face-oval (silhouette) points, in order around the face.
MP_FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176,
                149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)


class SegmentationError(RuntimeError):
  pass


class Segmenter:
  """Loads a `.tflite` segmenter and picks the back-end from its output channels (6 -> multiclass, 1 -> binary)."""

  def __init__(self, path):
    from ai_edge_litert.interpreter import Interpreter

    self.path = str(path)
    try:
      self._interp = Interpreter(model_path=self.path)
      self._interp.allocate_tensors()
    except Exception as e:
      raise SegmentationError(f"{path}: cannot load the segmentation model ({e})") from None
    out = self._interp.get_output_details()[0]["shape"]
    self.mode = "multiclass" if out[-1] == 6 else "binary"
    self._mp = None
    if self.mode == "multiclass":
      from mediapipe.tasks.python import BaseOptions, vision

      opts = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=self.path),
                                          running_mode=vision.RunningMode.IMAGE, output_category_mask=True)
      self._mp = vision.ImageSegmenter.create_from_options(opts)

  def segment(self, img_rgb: np.ndarray, lm478=None) -> np.ndarray:
    """[H,W] uint8 class map. The binary back-end needs the image's [478,2] landmarks (pixels)."""
    if self.mode == "multiclass":
      import mediapipe as mp

      res = self._mp.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img_rgb)))
      return res.category_mask.numpy_view().copy().astype(np.uint8)
    if lm478 is None:
      raise SegmentationError("the binary selfie segmenter needs face landmarks for the head/torso split")
    return split_person(self.person_probability(img_rgb) > 0.5, lm478)

  def person_probability(self, img_rgb: np.ndarray) -> np.ndarray:
    """[H,W] float32 person probability from the binary model (input resized to its 256² RGB [0,1] input)."""
    import cv2

    det = self._interp.get_input_details()[0]
    h, w = det["shape"][1:3]
    x = cv2.resize(img_rgb, (int(w), int(h)), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    self._interp.set_tensor(det["index"], x[None])
    self._interp.invoke()
    p = self._interp.get_tensor(self._interp.get_output_details()[0]["index"])[0, ..., 0]
    return cv2.resize(p, (img_rgb.shape[1], img_rgb.shape[0]), interpolation=cv2.INTER_LINEAR)

  def close(self):
    if self._mp is not None:
      self._mp.close()


def split_person(person: np.ndarray, lm478: np.ndarray) -> np.ndarray:
  """Landmark-based split of a person mask into classes 1 (hair), 2 (neck), 3 (face skin), 4 (clothes)."""
  import cv2

  h, w = person.shape
  oval = np.asarray(lm478, np.float64)[list(MP_FACE_OVAL)]
  face = np.zeros((h, w), np.uint8)
  cv2.fillPoly(face, [np.round(oval).astype(np.int32)], 1)
  face = face.astype(bool)
  x0, x1 = oval[:, 0].min(), oval[:, 0].max()
  y_top, y_chin = oval[:, 1].min(), oval[:, 1].max()
  fw, fh = x1 - x0, y_chin - y_top
  cx = 0.5 * (x0 + x1)
  rows, cols = np.mgrid[0:h, 0:w]
  # Jaw line: below it everything belongs to the body. It follows the lower oval (interpolated per column).
  lower = oval[np.argsort(oval[:, 0])]
  jaw = np.full(w, -np.inf)
  in_x = (cols[0] >= x0) & (cols[0] <= x1)
  mid = 0.5 * (y_top + y_chin)
  low_pts = oval[oval[:, 1] > mid]
  low_pts = low_pts[np.argsort(low_pts[:, 0])]
  jaw[in_x] = np.interp(cols[0][in_x], low_pts[:, 0], low_pts[:, 1])
  jaw[~in_x] = mid + 0.15 * fh  # beside the face: hair may fall to about the ear lobes
  head_zone = (rows < jaw[None]) & (np.abs(cols - cx) < 0.5 * fw + 0.45 * fw) & (rows > y_top - 0.9 * fh)
  seg = np.zeros((h, w), np.uint8)
  seg[person] = 4
  seg[person & head_zone] = 1
  neck = person & ~head_zone & (np.abs(cols - cx) < 0.33 * fw) & (rows < y_chin + 0.45 * fh)
  seg[neck] = 2
  seg[person & face] = 3
  seg[~person & face] = 3  # the face oval is trusted over a missed person pixel
  return seg


def onehot(seg: np.ndarray) -> np.ndarray:
  """[H,W] classes -> [H,W,6] float32 one-hot (NHWC; the official tensor is [6,H,W])."""
  return (seg[..., None] == np.arange(6)).astype(np.float32)


def encode_segmap(seg: np.ndarray) -> np.ndarray:
  """The official colour-coded segmap PNG content ([H,W,3] uint8)."""
  return SEG_COLORS[seg]


def decode_segmap(rgb: np.ndarray) -> np.ndarray:
  """Inverse of `encode_segmap` (exact colours; unknown colours -> background)."""
  seg = np.zeros(rgb.shape[:2], np.uint8)
  for i, c in enumerate(SEG_COLORS):
    seg[np.all(rgb == c, axis=-1)] = i
  return seg


def mode_mask(seg: np.ndarray, mode: str) -> np.ndarray:
  return np.isin(seg, MODE_CLASSES[mode])


def masked_image(img: np.ndarray, seg: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
  """`_seg_out_img_with_segmap`: pixels outside the mode's classes set to 0. Returns (image, mask)."""
  m = mode_mask(seg, mode)
  out = img.copy()
  out[~m] = 0
  return out, m


def _column_tops(mask: np.ndarray):
  """For every column with mask pixels: (row of the top pixel, column, run count of mask pixels in the column)."""
  cols = np.nonzero(mask.any(0))[0]
  top = mask[:, cols].argmax(0)
  cnt = mask[:, cols].sum(0)
  return top, cols, cnt


def inpaint_torso(img: np.ndarray, seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`inpaint_torso_job`: remove the head and extend the torso/neck upward under it.

  Clothes: each column's top pixel with head directly above is copied 9 px upward, darkened ×0.98^k (k = 0..8).
  Neck (dilated vertically by a 3×1 element, 3 iterations): the column's top pixel with head above is pushed down by
  min(count − 1, 4) px and copied 53 px upward, darkened ×0.98^k; the neck-inpainted pixels are then replaced by a
  5×5 Gaussian blur (sigma 4, which is what the official positional `cv2.BORDER_DEFAULT` argument sets).
  Returns (torso image uint8 with everything outside neck ∪ clothes ∪ inpainted set to 0, that mask).
  Coordinates above the image top are dropped (the official numpy indexing wraps them around).
  """
  import cv2
  from scipy.ndimage import binary_dilation

  head = np.isin(seg, (1, 3, 5))
  neck = seg == 2
  torso = seg == 4
  out = img.copy()
  out[head] = 0
  h = img.shape[0]

  def extend(mask, length, push_down):
    top, cols, cnt = _column_tops(mask)
    ok = (top >= 1) & head[np.maximum(top - 1, 0), cols]
    top, cols, cnt = top[ok], cols[ok], cnt[ok]
    if push_down:
      top = top + np.minimum(cnt - 1, push_down)
    colors = img[top, cols].astype(np.float64)
    k = np.arange(length)
    rr = top[None] - k[:, None]
    cc = np.broadcast_to(cols[None], rr.shape)
    vals = colors[None] * (0.98 ** k)[:, None, None]
    keep = rr >= 0
    return rr[keep], cc[keep], vals[keep]

  tmask = np.zeros(head.shape, bool)
  if torso.any():
    r, c, v = extend(torso, 9, 0)
    out[r, c] = v.astype(np.uint8)  # uint8 assignment truncates, as numpy does in the official code
    tmask[r, c] = True
  neck_d = binary_dilation(neck, structure=np.array([[0, 1, 0]] * 3, bool), iterations=3)
  nmask = np.zeros(head.shape, bool)
  if neck_d.any():
    r, c, v = extend(neck_d, 48 + 4 + 1, 4)
    out[r, c] = v.astype(np.uint8)
    nmask[r, c] = True
    blur = cv2.GaussianBlur(out, (5, 5), 4)
    out[nmask] = blur[nmask]
  mask = neck_d | torso | nmask | tmask
  out[~mask] = 0
  return out, mask


def extract_background(imgs, segs, dist_thresh: float = 10.0) -> np.ndarray:
  """KNN background fill (`extract_background`, method 'knn'): a pixel farther than 10 px from any non-background
  pixel in some sampled frame is background, coloured from the frame where that distance is largest; every other
  pixel copies the nearest such background pixel (scipy cKDTree). imgs [T,H,W,3] uint8, segs [T,H,W]."""
  from scipy.spatial import cKDTree

  imgs, segs = np.asarray(imgs), np.asarray(segs)
  n = len(imgs)
  step = 5 if n < 100 else (20 if n < 10000 else n // 500)
  idx = list(range(0, n, step)) if n > step else [0]
  h, w = imgs.shape[1:3]
  grid = np.mgrid[0:h, 0:w].reshape(2, -1).T
  dists = []
  for i in idx:
    fg = np.argwhere(segs[i] != 0)
    if len(fg) == 0:
      dists.append(np.full(h * w, np.inf))
      continue
    d, _ = cKDTree(fg).query(grid, k=1)
    dists.append(d)
  dists = np.stack(dists)
  best = dists.max(0)
  frame = dists.argmax(0)
  is_bg = best > dist_thresh
  flat = np.stack([imgs[i].reshape(-1, 3) for i in idx])
  bg = np.zeros((h * w, 3), np.uint8)
  pix = np.nonzero(is_bg)[0]
  bg[pix] = flat[frame[pix], pix]
  if pix.size == 0:
    raise SegmentationError("no background pixel farther than 10 px from the person: cannot fill the background")
  rest = np.nonzero(~is_bg)[0]
  if rest.size:
    _, j = cKDTree(grid[pix]).query(grid[rest], k=1)
    bg[rest] = bg[pix[j]]
  return bg.reshape(h, w, 3)
