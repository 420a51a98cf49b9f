"""3DMM: the BFM 2009 front model (user-supplied) or a procedurally generated stand-in in the same format.

Conventions (PIPELINE.md §1): model axes +x = subject's left (image right), +y up, +z toward the camera; units are
decimetres. A frame's shape is S = mean + id_base·id + exp_base·exp with id ∈ R^80, exp ∈ R^64. Pose applies
M = Rz(z)·Ry(y)·Rx(x) to column vectors (the official code stores rot = Mᵀ and multiplies row vectors). The
camera sits on +z at distance 10: z_cam = 10 − z. Landmarks are projected with focal 1015 and principal point 112
on the 224×224 plane, v measured upward.

BFM files are licence-bound (University of Basel, non-commercial): r3p never ships them. `load_face_model(dir)`
reads the user's `BFM_model_front.mat` (or regenerates it from the six source files) plus
`index_mp468_from_mesh35709.npy`; `synthetic_face_model()` builds a small procedural head with the same keys,
shapes (up to N and F) and dtypes, used by tests and the demo path.
"""
from __future__ import annotations

import dataclasses
import pathlib
import struct
import zipfile
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

ID_DIM, EXP_DIM, TEX_DIM = 80, 64, 80
CAMERA_DISTANCE = 10.0
FOCAL = 1015.0
CENTER = 112.0
# EG3D-convention camera (data_gen/eg3d/convert_to_eg3d_convention.py): 2985.29 = 1015·1024/224·(300/466.285).
EG3D_FOCAL = 2985.29 / 700.0
EG3D_SCALE = 0.27
EG3D_OFFSET = (0.0, 0.006, 0.161)

BFM_FILE = "BFM_model_front.mat"
MP_INDEX_FILE = "index_mp468_from_mesh35709.npy"
EYE_FACE_FILES = ("bfm_left_eye_faces.npy", "bfm_right_eye_faces.npy")
SOURCE_FILES = ("01_MorphableModel.mat", "Exp_Pca.bin", "std_exp.txt", "BFM_front_idx.mat", "BFM_exp_idx.mat",
                "facemodel_info.mat")
WHERE_TO_GET = ("the Real3D-Portrait BFM bundle (README of yerfor/Real3DPortrait: Google Drive/Baidu link; BFM 2009 "
                "itself needs registration at faces.dmi.unibas.ch, non-commercial licence)")

# MediaPipe face-mesh point sets used by the fitting weights (PIPELINE.md §3.2) and by the landmark combination.
MP_EYE = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7,
          263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
MP_UPPER_EYELID = (161, 160, 159, 158, 157, 388, 387, 386, 385, 384)
MP_INNER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
MP_OUTER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
MP_UNMATCHED = (93, 127, 132, 234, 323, 356, 361, 454)


class FaceModelError(RuntimeError):
  """A face-model file is missing or malformed (the message names the file)."""


@dataclasses.dataclass(frozen=True)
class FaceModel:
  """A loaded 3DMM, re-centred, as numpy arrays (device copies are made by the jitted functions).

  mean_shape [N,3] float32 (re-centred); id_base [N,3,80]; exp_base [N,3,64]; tri [F,3] int32 0-based;
  keypoints68 [68] int32 = the file's 1-based `keypoints` (see `lm68_index`); mp468 [468] int32 0-based with
  unmatched entries (−999 in the file) set to vertex 0, mp468_valid [468] bool; eye_faces [E] int32 0-based triangle
  ids removed by the SECC renderer; ncc [N,3] float32 per-vertex NCC colour in [0,1]; synthetic: True for the
  procedural stand-in.
  """
  mean_shape: np.ndarray
  id_base: np.ndarray
  exp_base: np.ndarray
  tri: np.ndarray
  keypoints68: np.ndarray
  mp468: np.ndarray
  mp468_valid: np.ndarray
  eye_faces: np.ndarray
  ncc: np.ndarray
  synthetic: bool = False
  source: str = ""

  @property
  def num_vertices(self) -> int:
    return self.mean_shape.shape[0]

  def lm68_index(self, official_off_by_one: bool = True) -> np.ndarray:
    """0-based vertex ids of the 68 landmarks.

    The official `Face3DHelper` (used for kp_s/kp_d and the A2M labels) forgets the −1 of the 1-based `keypoints`
    and so takes the next vertex; `ParametricFaceModel` subtracts it. `official_off_by_one=True` reproduces the
    former (parity mode, the default for kp_s/kp_d).
    """
    k = self.keypoints68.astype(np.int32)
    return np.minimum(k, self.num_vertices - 1) if official_off_by_one else k - 1

  def render_faces(self) -> np.ndarray:
    """[F',3] 0-based triangles rendered into SECC: `tri` minus the eye triangles, order kept."""
    keep = np.ones(self.tri.shape[0], bool)
    keep[self.eye_faces] = False
    return self.tri[keep]


# ---------------------------------------------------------------------------------------------------------------
# Loading the user's BFM


def _require(path: pathlib.Path, what: str) -> pathlib.Path:
  if not path.exists():
    raise FaceModelError(f"missing {path.name} in {path.parent} ({what}); get it from {WHERE_TO_GET}")
  return path


def _from_bfm_dict(d: dict, mp_index: np.ndarray, eye_faces: Optional[np.ndarray], source: str,
                   synthetic: bool = False) -> FaceModel:
  """Builds a FaceModel from the keys of `BFM_model_front.mat` (1-based indices, [3N,·] bases)."""
  for k in ("meanshape", "idBase", "exBase", "tri", "keypoints"):
    if k not in d:
      raise FaceModelError(f"{source}: key '{k}' missing (not a BFM_model_front.mat)")
  mean = np.asarray(d["meanshape"], np.float32).reshape(-1, 3)
  n = mean.shape[0]
  # Re-centring over all vertices (PIPELINE §1.2), done by both official model classes.
  mean = mean - mean.mean(axis=0, keepdims=True)
  id_base = np.asarray(d["idBase"], np.float32).reshape(n, 3, -1)[..., :ID_DIM]
  exp_base = np.asarray(d["exBase"], np.float32).reshape(n, 3, -1)[..., :EXP_DIM]
  tri = np.asarray(d["tri"]).astype(np.int64).reshape(-1, 3) - 1
  kp = np.asarray(d["keypoints"]).astype(np.int64).reshape(-1)
  if kp.shape[0] != 68 or id_base.shape[-1] != ID_DIM or exp_base.shape[-1] != EXP_DIM:
    raise FaceModelError(f"{source}: unexpected shapes keypoints {kp.shape}, idBase {id_base.shape}, "
                         f"exBase {exp_base.shape}")
  mp = np.asarray(mp_index).astype(np.int64).reshape(-1)
  if mp.shape[0] != 468:
    raise FaceModelError(f"{source}: the MediaPipe index has {mp.shape[0]} entries, expected 468")
  valid = mp >= 0
  mp = np.where(valid, mp, 0)
  if eye_faces is None:
    eye_faces = eye_faces_from_landmarks(mean, tri, mp, valid)
  # NCC code (§2.3): per-axis min-max normalised mean shape (shift-invariant, so re-centring does not matter).
  lo, hi = mean.min(0), mean.max(0)
  ncc = ((mean - lo) / (hi - lo)).astype(np.float32)
  return FaceModel(mean_shape=mean, id_base=id_base, exp_base=exp_base, tri=tri.astype(np.int32),
                   keypoints68=kp.astype(np.int32), mp468=mp.astype(np.int32), mp468_valid=valid,
                   eye_faces=np.asarray(eye_faces, np.int32), ncc=ncc, synthetic=synthetic, source=source)


def load_face_model(bfm_dir) -> FaceModel:
  """Loads the user's BFM folder: `BFM_model_front.mat` (regenerated from the six source files when only those
  exist) + `index_mp468_from_mesh35709.npy`; optional `bfm_{left,right}_eye_faces.npy` (MIT files of the official
  repo; without them the eye triangles are derived from the MediaPipe eye contours, an approximation)."""
  import scipy.io

  bfm_dir = pathlib.Path(bfm_dir)
  if not bfm_dir.is_dir():
    raise FaceModelError(f"BFM folder {bfm_dir} does not exist; it must hold {BFM_FILE} and {MP_INDEX_FILE} from "
                         f"{WHERE_TO_GET}")
  mat = bfm_dir / BFM_FILE
  if mat.exists():
    try:
      d = scipy.io.loadmat(str(mat))
    except Exception as e:  # corrupt / truncated download
      raise FaceModelError(f"cannot read {mat}: {e}") from None
  elif all((bfm_dir / f).exists() for f in SOURCE_FILES):
    d = generate_bfm_front(bfm_dir)
  else:
    _require(mat, "the BFM 2009 front model with the expression basis")
  mp = np.load(_require(bfm_dir / MP_INDEX_FILE, "MediaPipe-468 → BFM vertex map"))
  eyes = None
  if all((bfm_dir / f).exists() for f in EYE_FACE_FILES):
    eyes = np.concatenate([np.load(bfm_dir / f).reshape(-1) for f in EYE_FACE_FILES]) - 1  # files are 1-based
  model = _from_bfm_dict(d, mp, eyes, str(mat))
  if (bfm_dir / "ncc_code.npy").exists():  # the official constant (MIT repo file); equal to the computed one
    ncc = np.load(bfm_dir / "ncc_code.npy").astype(np.float32)
    if ncc.shape != (3, model.num_vertices):
      raise FaceModelError(f"{bfm_dir / 'ncc_code.npy'}: shape {ncc.shape}, expected (3, {model.num_vertices})")
    model = dataclasses.replace(model, ncc=np.ascontiguousarray(ncc.T))
  return model


def generate_bfm_front(bfm_dir) -> dict:
  """`transferBFM09` (PIPELINE §1.1): builds the `BFM_model_front.mat` dict from the six source files."""
  import scipy.io

  bfm_dir = pathlib.Path(bfm_dir)
  for f in SOURCE_FILES:
    _require(bfm_dir / f, "source of BFM_model_front.mat")
  orig = scipy.io.loadmat(str(bfm_dir / "01_MorphableModel.mat"))
  shape_mu, shape_pc, shape_ev = orig["shapeMU"], orig["shapePC"], orig["shapeEV"]
  tex_mu, tex_pc, tex_ev = orig["texMU"], orig["texPC"], orig["texEV"]
  with open(bfm_dir / "Exp_Pca.bin", "rb") as fh:
    exp_dim = struct.unpack("<i", fh.read(4))[0]
    raw = np.frombuffer(fh.read(), np.float32)
  n_exp_vert3 = raw.size // (exp_dim + 1)
  exp_pc = raw[n_exp_vert3:].reshape(exp_dim, n_exp_vert3).T  # stored PC-major
  std_exp = np.loadtxt(bfm_dir / "std_exp.txt").reshape(-1)[:exp_dim]
  id_base = (shape_pc * shape_ev.reshape(1, -1) / 1e5)[:, :ID_DIM]  # "/1e5: unify the scale to decimeter"
  ex_base = (exp_pc * std_exp.reshape(1, -1) / 1e5)[:, :EXP_DIM]
  tex_base = (tex_pc * tex_ev.reshape(1, -1))[:, :TEX_DIM]
  index_exp = scipy.io.loadmat(str(bfm_dir / "BFM_front_idx.mat"))["idx"].astype(np.int64).reshape(-1) - 1
  trim = scipy.io.loadmat(str(bfm_dir / "BFM_exp_idx.mat"))["trimIndex"].astype(np.int64).reshape(-1)
  index_shape = trim[index_exp] - 1

  def rows(ix):  # vertex ids -> xyz row ids of a [3N,·] array
    return (3 * ix[:, None] + np.arange(3)[None]).reshape(-1)

  out = {
      "meanshape": (shape_mu.reshape(-1)[rows(index_shape)] / 1e5).reshape(1, -1).astype(np.float32),
      "idBase": id_base[rows(index_shape)].astype(np.float32),
      "exBase": ex_base[rows(index_exp)].astype(np.float32),
      "meantex": tex_mu.reshape(-1)[rows(index_shape)].reshape(1, -1).astype(np.float32),
      "texBase": tex_base[rows(index_shape)].astype(np.float32),
  }
  info = scipy.io.loadmat(str(bfm_dir / "facemodel_info.mat"))
  for k in ("tri", "point_buf", "tri_mask2", "keypoints", "frontmask2_idx", "skinmask"):
    out[k] = info[k]
  return out


def eye_faces_from_landmarks(mean: np.ndarray, tri: np.ndarray, mp: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """0-based ids of triangles whose centroid lies inside the MediaPipe eye contours (frontal x/y of the mean shape).

  Used when the eye-face lists are not supplied; the official lists come from the repo's .npy files.
  """
  cent = mean[tri].mean(1)[:, :2]
  out = []
  for ids in (MP_EYE[:16], MP_EYE[16:]):
    ids = [i for i in ids if valid[i]]
    poly = mean[mp[ids], :2]
    poly = _order_polygon(poly)
    out.append(np.nonzero(_points_in_polygon(cent, poly))[0])
  return np.concatenate(out).astype(np.int32)


def _order_polygon(p: np.ndarray) -> np.ndarray:
  c = p.mean(0)
  return p[np.argsort(np.arctan2(p[:, 1] - c[1], p[:, 0] - c[0]))]


def _points_in_polygon(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
  """Even-odd ray casting, vectorised over points."""
  x, y = pts[:, 0:1], pts[:, 1:2]
  x0, y0 = poly[:, 0][None], poly[:, 1][None]
  x1, y1 = np.roll(poly[:, 0], -1)[None], np.roll(poly[:, 1], -1)[None]
  cond = (y0 > y) != (y1 > y)
  with np.errstate(divide="ignore", invalid="ignore"):
    xint = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
  return (np.sum(cond & (x < xint), axis=1) % 2) == 1


# ---------------------------------------------------------------------------------------------------------------
# Synthetic face model (procedural; same keys/dtypes as BFM_model_front.mat)


def _gauss(x, y, cx, cy, sx, sy):
  return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _lm68_template() -> np.ndarray:
  """A procedural 68-point frontal layout (iBUG order, point 0 on the subject's right = −x) in model x/y (dm)."""
  pts = []
  th = np.linspace(np.pi, 2 * np.pi, 17)  # jaw: −x to +x through the chin
  pts += list(zip(0.68 * np.cos(th), 0.1 + 0.95 * np.sin(th)))
  xs = np.linspace(0.52, 0.12, 5)
  pts += [(-x, 0.40 + 0.06 * np.sin(np.pi * (x - 0.12) / 0.4)) for x in xs]  # right brow, outer to inner
  pts += [(x, 0.40 + 0.06 * np.sin(np.pi * (x - 0.12) / 0.4)) for x in xs[::-1]]  # left brow, inner to outer
  pts += [(0.0, y) for y in np.linspace(0.22, -0.12, 4)]  # nose bridge
  pts += [(x, -0.2 + 0.03 * abs(x) / 0.12) for x in np.linspace(-0.12, 0.12, 5)]  # nostrils
  ang = np.array([np.pi, 2 * np.pi / 3, np.pi / 3, 0, -np.pi / 3, -2 * np.pi / 3])  # corner, over the top, back
  for cx in (-0.32, 0.32):
    pts += [(cx + 0.11 * np.cos(a), 0.22 + 0.045 * np.sin(a)) for a in ang]
  ang = np.pi - 2 * np.pi * np.arange(12) / 12  # outer lip from the right corner over the top
  pts += [(0.24 * np.cos(a), -0.50 + 0.09 * np.sin(a)) for a in ang]
  ang = np.pi - 2 * np.pi * np.arange(8) / 8
  pts += [(0.17 * np.cos(a), -0.50 + 0.025 * np.sin(a)) for a in ang]
  return np.asarray(pts, np.float64)


def synthetic_face_model(resolution=(96, 72), seed: int = 0, mp_canonical: Optional[np.ndarray] = None,
                         as_mat_dict: bool = False):
  """A procedural head in BFM_model_front.mat format (deterministic for a seed).

  resolution (n_azimuth, n_elevation) sets N = na·ne vertices and F = 2(na−1)(ne−1) triangles; (220, 160) gives
  ~70k triangles like the real model. The surface is an ellipsoid front with nose, brows, eye sockets (whose centre
  triangles are the "eye faces"), lips and chin; the id basis holds smooth global deformations, the expression basis
  jaw opening, smile, pucker, eyelid closing, brow raise and smaller local fields. `mp_canonical` [468,3] (the
  MediaPipe canonical mesh, e.g. from `canonical_mesh_from_task`) makes the MediaPipe map geometric; without it the
  map is a deterministic pick of front vertices (enough for self-consistent tests). Returns a FaceModel, or the
  raw .mat dict (1-based indices, [3N,·] bases) with as_mat_dict=True.
  """
  na, ne = resolution
  rs = np.random.RandomState(seed)
  az = np.linspace(-1.9, 1.9, na)
  el = np.linspace(-1.25, 1.35, ne)
  A, E = np.meshgrid(az, el, indexing="xy")  # [ne, na]
  x = 0.78 * np.sin(A) * np.cos(E)
  y = 1.02 * np.sin(E)
  z = 0.88 * np.cos(A) * np.cos(E)
  front = np.clip(np.cos(A), 0, None) * np.clip(np.cos(E), 0, None)
  neck = 1.0 - 0.3 * np.clip((-0.75 - y) / 0.3, 0, 1)  # narrower below the jaw
  x, z = x * neck, z * neck
  bump = (0.30 * _gauss(x, y, 0, -0.12, 0.085, 0.22) * (1 - 0.5 * np.clip((y + 0.12) / 0.3, 0, 1))
          - 0.09 * _gauss(x, y, 0.32, 0.22, 0.13, 0.08) - 0.09 * _gauss(x, y, -0.32, 0.22, 0.13, 0.08)
          + 0.05 * _gauss(x, y, 0.3, 0.39, 0.16, 0.04) + 0.05 * _gauss(x, y, -0.3, 0.39, 0.16, 0.04)
          + 0.06 * _gauss(x, y, 0, -0.47, 0.2, 0.035) + 0.05 * _gauss(x, y, 0, -0.56, 0.18, 0.035)
          - 0.02 * _gauss(x, y, 0, -0.515, 0.2, 0.01) + 0.05 * _gauss(x, y, 0, -0.85, 0.18, 0.1)
          + 0.03 * _gauss(x, y, 0.42, -0.15, 0.15, 0.15) + 0.03 * _gauss(x, y, -0.42, -0.15, 0.15, 0.15))
  z = z + bump * front
  mean = np.stack([x, y, z], -1).reshape(-1, 3)  # vertex v = row·na + col
  n = mean.shape[0]

  vid = np.arange(n).reshape(ne, na)
  a, b, c, d = vid[:-1, :-1], vid[:-1, 1:], vid[1:, :-1], vid[1:, 1:]
  # Counter-clockwise seen from +z (the camera side) for the front.
  tri = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)], 0)
  tri = tri.reshape(2, -1, 3).transpose(1, 0, 2).reshape(-1, 3)  # interleave the two halves of each quad
  f = tri.shape[0]

  px, py, pz = mean[:, 0], mean[:, 1], mean[:, 2]
  fr = front.reshape(-1)

  # Identity basis: smooth random fields (cosine features of position), decaying scale per component.
  feats = []
  for k in range(24):
    w = rs.randn(3) * (1.0 + k / 8.0)
    ph = rs.uniform(0, 2 * np.pi)
    feats.append(np.cos(mean @ w + ph))
  feats = np.stack(feats, 1)  # [N,24]
  id_base = np.zeros((n, 3, ID_DIM))
  for j in range(ID_DIM):
    mix = rs.randn(24, 3) / np.sqrt(24)
    id_base[:, :, j] = feats @ mix * (0.035 / (1.0 + j / 8.0))
  id_base[:, 0, 0] += 0.06 * px  # width
  id_base[:, 1, 1] += 0.06 * py  # height
  id_base[:, 2, 2] += 0.05 * _gauss(px, py, 0, -0.12, 0.1, 0.25) * fr  # nose size

  # Expression basis.
  exp_base = np.zeros((n, 3, EXP_DIM))
  mouth = _gauss(px, py, 0, -0.55, 0.32, 0.3) * fr
  lower = 1.0 / (1.0 + np.exp(-(-0.515 - py) / 0.015))  # below the lip line
  exp_base[:, 1, 0] = -0.12 * lower * mouth - 0.03 * (1 - lower) * mouth * 0.3  # jaw open
  exp_base[:, 2, 0] = -0.03 * lower * mouth
  corner = _gauss(np.abs(px), py, 0.24, -0.5, 0.1, 0.1) * fr
  exp_base[:, 0, 1] = 0.04 * np.sign(px) * corner  # smile
  exp_base[:, 1, 1] = 0.04 * corner
  exp_base[:, 2, 2] = 0.05 * _gauss(px, py, 0, -0.52, 0.18, 0.1) * fr  # pucker
  for j, s in ((3, 1), (4, -1)):  # eyelids close toward the eye centre line
    eye = _gauss(px, py, s * 0.32, 0.22, 0.13, 0.1) * fr
    exp_base[:, 1, j] = -0.05 * (py - 0.22) / 0.1 * eye
  exp_base[:, 1, 5] = 0.04 * _gauss(px, py, 0, 0.4, 0.45, 0.1) * fr  # brow raise
  for j in range(6, EXP_DIM):
    cx, cy = rs.uniform(-0.5, 0.5), rs.uniform(-0.8, 0.5)
    loc = _gauss(px, py, cx, cy, 0.2, 0.2) * fr
    exp_base[:, :, j] = loc[:, None] * rs.randn(3)[None] * (0.02 / (1 + (j - 6) / 16))

  # Eye holes: triangles whose centroid is inside an ellipse around each eye socket (left = subject's left = +x).
  cen = mean[tri].mean(1)
  eye_faces = []
  for s in (1, -1):
    inside = ((cen[:, 0] - s * 0.32) / 0.1) ** 2 + ((cen[:, 1] - 0.22) / 0.04) ** 2 < 1.0
    eye_faces.append(np.nonzero(inside & (cen[:, 2] > 0))[0])

  def nearest_front(xy):
    """Front vertex nearest in x/y to each query (the one with the largest z among near ties)."""
    cand = np.nonzero(fr > 0.2)[0]
    d = ((mean[cand, None, :2] - xy[None]) ** 2).sum(-1)
    return cand[np.argmin(d, 0)]

  kp68 = nearest_front(_lm68_template())
  if mp_canonical is not None:
    mp = mp_index_from_canonical(mean, fr, np.asarray(mp_canonical, np.float64))
  else:
    cand = np.nonzero(fr > 0.3)[0]
    mp = np.sort(rs.choice(cand, 468, replace=False))
  mp = mp.astype(np.int64)
  mp[list(MP_UNMATCHED)] = -999  # like v1/v2/v3.1 of the official map

  # Point buffer (1-based faces around each vertex, padded with F+1 like an appended zero-normal face).
  point_buf = np.full((n, 8), f + 1, np.int64)
  fill = np.zeros(n, np.int64)
  for fi, t in enumerate(tri):
    for v in t:
      if fill[v] < 8:
        point_buf[v, fill[v]] = fi + 1
        fill[v] += 1
  tex = np.stack([200 + 0 * px, 160 + 0 * px, 140 + 0 * px], 1) - 30 * (1 - fr)[:, None]
  d = {
      "meanshape": mean.reshape(1, -1).astype(np.float32),
      "idBase": id_base.reshape(3 * n, ID_DIM).astype(np.float32),
      "exBase": exp_base.reshape(3 * n, EXP_DIM).astype(np.float32),
      "meantex": tex.reshape(1, -1).astype(np.float32),
      "texBase": (rs.randn(3 * n, TEX_DIM) * 2.0).astype(np.float32),
      "tri": (tri + 1).astype(np.float64),
      "point_buf": point_buf.astype(np.float64),
      "tri_mask2": (tri[cen[:, 2] > 0] + 1).astype(np.float64),
      "keypoints": (kp68 + 1).reshape(1, 68).astype(np.float64),
      "frontmask2_idx": (np.nonzero(fr > 0.2)[0] + 1).reshape(-1, 1).astype(np.float64),
      "skinmask": (fr > 0.2).reshape(1, -1).astype(np.float64),
  }
  if as_mat_dict:
    return d, mp, np.concatenate(eye_faces) + 1
  return _from_bfm_dict(d, mp, np.concatenate(eye_faces), source=f"synthetic(seed={seed}, res={na}x{ne})",
                        synthetic=True)


def mp_index_from_canonical(mean: np.ndarray, front: np.ndarray, canon: np.ndarray) -> np.ndarray:
  """Maps MediaPipe canonical points to vertices: similarity-align canonical x/y (eye corners 33/263, nose tip 1,
  chin 152) to the synthetic layout, then take the nearest front vertex in x/y."""
  c = canon[:, :2].copy()
  # Synthetic anchors: outer eye corners at (∓0.43, 0.22), nose tip (0, -0.2), chin (0, -0.86).
  src = c[[33, 263, 1, 152]]
  dst = np.array([[-0.43, 0.22], [0.43, 0.22], [0.0, -0.2], [0.0, -0.86]])
  if src[1, 0] < src[0, 0]:  # canonical x may point the other way
    c[:, 0] = -c[:, 0]
    src = c[[33, 263, 1, 152]]
  sx = (dst[:, 0].max() - dst[:, 0].min()) / (src[:, 0].max() - src[:, 0].min())
  sy = (dst[:, 1].max() - dst[:, 1].min()) / (src[:, 1].max() - src[:, 1].min())
  xy = (c - src.mean(0)) * np.array([sx, sy]) + dst.mean(0)
  cand = np.nonzero(front > 0.2)[0]
  d = ((mean[cand, None, :2] - xy[None]) ** 2).sum(-1)
  return cand[np.argmin(d, 0)]


def canonical_mesh_from_task(task_path) -> np.ndarray:
  """[468,3] canonical face-mesh vertices (cm) read from a FaceLandmarker `.task` bundle's geometry metadata.

  The bundle is a zip; `geometry_pipeline_metadata_landmarks.binarypb` holds a Mesh3d whose vertex buffer is
  (x, y, z, u, v) per vertex as repeated float32 (protobuf field 3 of field 1). Parsed with a tiny wire reader.
  """
  with zipfile.ZipFile(task_path) as z:
    name = [n for n in z.namelist() if n.startswith("geometry_pipeline_metadata")]
    if not name:
      raise FaceModelError(f"{task_path}: no geometry_pipeline_metadata in the landmarker bundle")
    buf = z.read(name[0])

  def fields(b):
    i = 0
    while i < len(b):
      key, i = _varint(b, i)
      fno, wt = key >> 3, key & 7
      if wt == 0:
        v, i = _varint(b, i)
      elif wt == 1:
        v, i = b[i:i + 8], i + 8
      elif wt == 2:
        ln, i = _varint(b, i)
        v, i = b[i:i + ln], i + ln
      elif wt == 5:
        v, i = b[i:i + 4], i + 4
      else:
        raise FaceModelError(f"{task_path}: unsupported protobuf wire type {wt}")
      yield fno, wt, v

  mesh = next(v for f, wt, v in fields(buf) if f == 1 and wt == 2)
  floats = []
  for f, wt, v in fields(mesh):
    if f == 3 and wt == 5:
      floats.append(struct.unpack("<f", v)[0])
    elif f == 3 and wt == 2:  # packed
      floats.extend(np.frombuffer(v, "<f4").tolist())
  arr = np.asarray(floats, np.float64)
  if arr.size != 468 * 5:
    raise FaceModelError(f"{task_path}: canonical mesh has {arr.size} floats, expected {468 * 5}")
  return arr.reshape(468, 5)[:, :3]


def _varint(b, i):
  out, shift = 0, 0
  while True:
    c = b[i]
    i += 1
    out |= (c & 0x7F) << shift
    if not c & 0x80:
      return out, i
    shift += 7


def default_face_model(bfm_dir=None, landmarker_path=None, log=print) -> FaceModel:
  """The user's BFM if `bfm_dir` is given, else the synthetic model (saying so)."""
  if bfm_dir:
    return load_face_model(bfm_dir)
  canon = canonical_mesh_from_task(landmarker_path) if landmarker_path else None
  if log:
    log("r3p.face: no --bfm_dir given: using the SYNTHETIC face model (procedural head, not BFM); SECC and "
        "coefficients are not comparable with the official model")
  return synthetic_face_model(mp_canonical=canon)


# ---------------------------------------------------------------------------------------------------------------
# Geometry (jnp, batched over leading axes)


def rotation_matrix(euler) -> jax.Array:
  """M = Rz(z)·Ry(y)·Rx(x) for euler = (x, y, z) radians, [...,3] -> [...,3,3]; the official `rot` is Mᵀ."""
  euler = jnp.asarray(euler, jnp.float32)
  x, y, z = euler[..., 0], euler[..., 1], euler[..., 2]
  one, zero = jnp.ones_like(x), jnp.zeros_like(x)
  cx, sx, cy, sy, cz, sz = jnp.cos(x), jnp.sin(x), jnp.cos(y), jnp.sin(y), jnp.cos(z), jnp.sin(z)
  rx = jnp.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).reshape(x.shape + (3, 3))
  ry = jnp.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(x.shape + (3, 3))
  rz = jnp.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).reshape(x.shape + (3, 3))
  hp = jax.lax.Precision.HIGHEST
  return jnp.matmul(jnp.matmul(rz, ry, precision=hp), rx, precision=hp)


def shape_from_coeffs(mean, id_base, exp_base, id_coeff, exp_coeff) -> jax.Array:
  """S = mean + id_base·id + exp_base·exp: mean [K,3], bases [K,3,80]/[K,3,64], coeffs [...,80]/[...,64]
  -> [...,K,3]."""
  hp = jax.lax.Precision.HIGHEST
  return (jnp.asarray(mean) + jnp.einsum("kcd,...d->...kc", jnp.asarray(id_base), id_coeff, precision=hp)
          + jnp.einsum("kcd,...d->...kc", jnp.asarray(exp_base), exp_coeff, precision=hp))


def apply_pose(verts, euler, trans) -> jax.Array:
  """M·p + t for verts [...,K,3], euler/trans [...,3]."""
  rot = rotation_matrix(euler)
  return jnp.einsum("...ij,...kj->...ki", rot, verts, precision=jax.lax.Precision.HIGHEST) + trans[..., None, :]


def to_camera(verts) -> jax.Array:
  """z_cam = 10 − z (camera on +z looking at the origin), x/y unchanged."""
  verts = jnp.asarray(verts)
  return verts.at[..., 2].set(CAMERA_DISTANCE - verts[..., 2])


def project_224(verts_cam) -> jax.Array:
  """Perspective on the 224 plane: (u, v_up) = 1015·(x, y)/z_cam + 112."""
  return FOCAL * verts_cam[..., :2] / verts_cam[..., 2:3] + CENTER


def keypoint_basis(model: FaceModel, index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean [K,3], id_base [K,3,80], exp_base [K,3,64]) gathered at 0-based vertex ids."""
  index = np.asarray(index)
  return model.mean_shape[index], model.id_base[index], model.exp_base[index]


def lm2d_from_coeffs(basis, id_coeff, exp_coeff, euler, trans) -> jax.Array:
  """`Face3DHelper.reconstruct_lm2d`: normalised image coordinates (u/224, (224 − v_up)/224), y down, ≈[0,1]."""
  pts = to_camera(apply_pose(shape_from_coeffs(*basis, id_coeff, exp_coeff), euler, trans))
  uv = project_224(pts)
  return jnp.stack([uv[..., 0] / 224.0, (224.0 - uv[..., 1]) / 224.0], -1)


def kp68_for_network(model: FaceModel, id_coeff, exp_coeff, euler, trans, official_off_by_one=True) -> jax.Array:
  """kp_s / kp_d before smoothing: lm2d ×2 − 1, clamped to [−1,1], z = 0 appended -> [...,68,3]."""
  basis = keypoint_basis(model, model.lm68_index(official_off_by_one))
  lm = jnp.clip(lm2d_from_coeffs(basis, id_coeff, exp_coeff, euler, trans) * 2 - 1, -1, 1)
  return jnp.concatenate([lm, jnp.zeros_like(lm[..., :1])], -1)


def idexp_lm3d(model: FaceModel, id_coeff, exp_coeff, index) -> jax.Array:
  """`reconstruct_idexp_lm3d`: (id_base·id + exp_base·exp) at the keypoints ×10 (no mean) -> [...,K,3]."""
  _, ib, eb = keypoint_basis(model, index)
  return 10.0 * shape_from_coeffs(np.zeros(ib.shape[:2], np.float32), ib, eb, id_coeff, exp_coeff)


def cano_lm3d(model: FaceModel, id_coeff, exp_coeff, index) -> jax.Array:
  """`reconstruct_cano_lm3d`: mean + offsets at the keypoints, no pose, no ×10."""
  return shape_from_coeffs(*keypoint_basis(model, index), id_coeff, exp_coeff)


# ---------------------------------------------------------------------------------------------------------------
# EG3D camera and temporal smoothing


def eg3d_camera(euler, trans) -> jax.Array:
  """25-D EG3D-convention camera [...,25] = c2w (4×4 row-major) ++ normalised K (3×3) (PIPELINE §1.5).

  R = Mᵀ (the official stored rotation); c = 0.27·R·((0,0,10) − t) + (0, 0.006, 0.161); c2w rotation
  R·diag(1,−1,−1) (OpenCV axes: +z forward, +y down). euler = trans = 0 gives diag(1,−1,−1), origin (0,0.006,2.861).
  """
  euler = jnp.asarray(euler, jnp.float32)
  trans = jnp.asarray(trans, jnp.float32)
  r = jnp.swapaxes(rotation_matrix(euler), -1, -2)
  hp = jax.lax.Precision.HIGHEST
  c = EG3D_SCALE * jnp.einsum("...ij,...j->...i", r, jnp.array([0.0, 0.0, CAMERA_DISTANCE]) - trans, precision=hp)
  c = c + jnp.asarray(EG3D_OFFSET, jnp.float32)
  rot = r * jnp.array([1.0, -1.0, -1.0], jnp.float32)  # R·diag(1,−1,−1) scales columns
  top = jnp.concatenate([rot, c[..., None]], -1)
  bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], jnp.float32), top.shape[:-2] + (1, 4))
  c2w = jnp.concatenate([top, bottom], -2)
  k = jnp.array([[EG3D_FOCAL, 0, 0.5], [0, EG3D_FOCAL, 0.5], [0, 0, 1]], jnp.float32)
  k = jnp.broadcast_to(k, top.shape[:-2] + (3, 3))
  return jnp.concatenate([c2w.reshape(top.shape[:-2] + (16,)), k.reshape(top.shape[:-2] + (9,))], -1)


def smooth_camera_sequence(cameras, k: int = 7) -> np.ndarray:
  """`smooth_camera_sequence(k=7)` of the driver: per frame, over a ±k//2 window clipped at the ends (no padding),
  translation = mean and rotation = scipy `Rotation.mean` of the c2w rotations; K is kept."""
  from scipy.spatial.transform import Rotation

  cams = np.asarray(cameras, np.float64)
  out = cams.copy()
  t = cams.shape[0]
  c2w = cams[:, :16].reshape(t, 4, 4)
  h = k // 2
  prev = None
  for i in range(t):
    lo, hi = max(0, i - h), min(t, i + h + 1)
    trans = c2w[lo:hi, :3, 3].mean(0)
    try:
      rot = Rotation.from_matrix(c2w[lo:hi, :3, :3]).mean().as_matrix()
    except Exception:  # official: keep the previous frame's rotation on failure
      rot = prev if prev is not None else c2w[i, :3, :3]
    prev = rot
    m = c2w[i].copy()
    m[:3, :3], m[:3, 3] = rot, trans
    out[i, :16] = m.reshape(16)
  return out.astype(np.float32)


def smooth_features_xd(x, k: int = 7) -> np.ndarray:
  """`smooth_features_xd(k=7)`: symmetric padding (first/last k//2 frames reversed) then a k-tap box filter over
  time. x [T, ...]."""
  x = np.asarray(x, np.float64)
  h = k // 2
  pad = np.concatenate([x[:h][::-1], x, x[-h:][::-1]], 0) if h else x
  c = np.cumsum(np.concatenate([np.zeros_like(pad[:1]), pad], 0), 0)
  return ((c[k:] - c[:-k]) / k).astype(np.float32)


def mirror_index(i: int, length: int) -> int:
  """Ping-pong frame index (forward, backward, forward, ...) used to cover any T with a pose clip of `length`."""
  if length <= 1:
    return 0
  turn, res = divmod(i, length)
  return res if turn % 2 == 0 else length - res - 1


def driving_pose(src_euler, src_trans, drv_euler, drv_trans, num_frames: int, map_to_init_pose: bool = True):
  """PIPELINE §7.3 steps 6–8: mirror-index the pose clip to T frames, fix z to frame 0, map to the source pose
  (plain Euler addition, as the official driver). Returns euler, trans [T,3] float32."""
  drv_euler, drv_trans = np.asarray(drv_euler, np.float32), np.asarray(drv_trans, np.float32)
  idx = [mirror_index(i, drv_euler.shape[0]) for i in range(num_frames)]
  euler, trans = drv_euler[idx].copy(), drv_trans[idx].copy()
  trans[:, 2] = trans[0, 2]
  if map_to_init_pose:
    euler = euler + (np.asarray(src_euler, np.float32).reshape(1, 3) - euler[0:1])
    trans = trans + (np.asarray(src_trans, np.float32).reshape(1, 3) - trans[0:1])
  return euler, trans
