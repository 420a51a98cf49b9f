"""Embedded synthetic talking-head dataset: procedural heads, SECC-like maps and EG3D cameras, made by code.

No downloads: training runs on a fresh machine. Every quantity is a pure function of (identity code, expression
code, pose), written in jax.numpy so the same renderer also produces the *perturbed* / *blinked* SECC maps of the
motion-adapter regularisers inside the jitted step (TRAINING §2.3; the official re-renders the 3DMM SECC with
perturbed id/exp and closes eyelids with a KNN image edit — any equivalent eyelid edit is allowed, §6).

Conventions: images NHWC in [-1, 1]; SECC maps NHWC 3 channels in [-1, 1] (background -1, like the official
rendered SECC); masks [H,W,1] in {0,1}; camera 25-D EG3D vector (c2w row-major 16 + normalised K 9).

Codes (float32):
  ident [6]: skin rgb (3), head half-width, head half-height, hair darkness.
  expr  [3]: mouth opening in [0,1], eye opening in [0,1] (1 = open), smile in [-1,1].
  yaw   scalar radians (|yaw| ≤ 0.35) — shifts the face in the image and sets the camera.
  scene [9]: per-clip background colours (top, bottom: 6) and clothes colour (3) — the HTB-SR extras.

HTB-SR extras (`draw_full`, `SyntheticTalkingHeads(torso=True)`): a torso (neck + shoulders) that follows the
head yaw at a third of its shift, a static per-clip background, the full composite ("com" image), the torso-only
image (neck extended under the head, as the official inpainted torso), a 6-class segmap (0 bg, 1 hair, 2 body
skin, 3 face skin, 4 clothes, 5 others; head = {1,3,5}, torso = {2,4}) and 68 landmarks [68,3] in [-1,1]
(x → W, y → H, z = 0; jaw 0–16, brows 17–26, nose 27–35, eyes 36–47, mouth 48–67).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

FOCAL = 4.2647  # EG3D FFHQ normalised focal length
RADIUS = 2.7    # camera distance to the origin


def camera_from_yaw(yaw: Array, pitch: Array | float = 0.0) -> Array:
  """EG3D-style 25-D camera looking at the origin from radius 2.7 (OpenCV axes: +z forward, +y down)."""
  yaw = jnp.asarray(yaw, jnp.float32)
  pitch = jnp.asarray(pitch, jnp.float32)
  # Camera position on a sphere; world +y up is image -y.
  pos = RADIUS * jnp.stack([jnp.sin(yaw) * jnp.cos(pitch), jnp.sin(pitch), jnp.cos(yaw) * jnp.cos(pitch)])
  forward = -pos / jnp.linalg.norm(pos)
  up = jnp.array([0.0, 1.0, 0.0], jnp.float32)
  right = jnp.cross(up, forward)
  right = right / jnp.linalg.norm(right)
  down = jnp.cross(forward, right)
  rot = jnp.stack([right, down, forward], axis=1)  # columns = camera axes in world
  c2w = jnp.eye(4, dtype=jnp.float32).at[:3, :3].set(rot).at[:3, 3].set(pos)
  k = jnp.array([[FOCAL, 0, 0.5], [0, FOCAL, 0.5], [0, 0, 1]], jnp.float32)
  return jnp.concatenate([c2w.reshape(-1), k.reshape(-1)])


def _ellipse(x, y, cx, cy, rx, ry, sharp):
  d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
  return jax.nn.sigmoid(sharp * (1.0 - d))


def draw(ident: Array, expr: Array, yaw: Array, size: int, *, canonical: bool = False) -> dict[str, Array]:
  """One frame: {'image' [S,S,3], 'secc' [S,S,3], 'head_mask' [S,S,1]}.

  canonical=True gives the canonical SECC (frontal, neutral expression, as the official `cond_cano`)."""
  if canonical:
    expr = jnp.array([0.0, 1.0, 0.0], jnp.float32)
    yaw = jnp.float32(0.0)
  a = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size * 2.0 - 1.0
  y, x = jnp.meshgrid(a, a, indexing="ij")
  sharp = 0.25 * size
  shift = 0.6 * jnp.sin(yaw)          # face centre moves with the yaw
  rx, ry = ident[3], ident[4]
  head = _ellipse(x, y, shift, 0.05, rx, ry, sharp)
  mouth_open, eye_open, smile = expr[0], expr[1], expr[2]
  eye_ry = 0.02 + 0.07 * eye_open
  eyes = (_ellipse(x, y, shift - 0.35 * rx, -0.2 * ry, 0.16 * rx, eye_ry, sharp)
          + _ellipse(x, y, shift + 0.35 * rx, -0.2 * ry, 0.16 * rx, eye_ry, sharp))
  mouth_cy = 0.45 * ry - 0.05 * smile * ((x - shift) / rx) ** 2 * 4
  mouth = _ellipse(x, y, shift, mouth_cy, 0.35 * rx, 0.03 + 0.15 * mouth_open, sharp)
  skin = ident[:3]
  bg = jnp.array([-0.2, -0.1, 0.1], jnp.float32)
  hair = _ellipse(x, y, shift, -0.55 * ry, 1.05 * rx, 0.55 * ry, sharp) * (1 - head * (y > -0.6 * ry))
  img = bg[None, None] * (1 - head[..., None]) + skin[None, None] * head[..., None]
  img = img * (1 - hair[..., None]) + (-ident[5]) * hair[..., None]
  img = img * (1 - eyes[..., None]) + jnp.float32(-0.9) * eyes[..., None]
  img = img * (1 - mouth[..., None]) + jnp.array([0.6, -0.6, -0.5], jnp.float32) * mouth[..., None]
  # SECC: normalised coordinate colours of the face surface (x, y, pseudo-depth), eyes/mouth holes, bg -1.
  u = (x - shift) / rx
  v = (y - 0.05) / ry
  z = jnp.sqrt(jnp.clip(1.0 - u * u - v * v, 0.0, 1.0))
  ncc = jnp.stack([u, v, 2 * z - 1], axis=-1)
  face = head * (1 - jnp.clip(eyes + mouth, 0, 1))
  secc = ncc * face[..., None] + (-1.0) * (1 - face[..., None])
  return {"image": jnp.clip(img, -1, 1), "secc": jnp.clip(secc, -1, 1), "head_mask": (head > 0.5)[..., None]}


def scene_codes(seed: int, clip: int) -> np.ndarray:
  """Per-clip scene [9]: background top/bottom rgb in [-1,1] and clothes rgb."""
  r = np.random.default_rng([seed, 4, clip])
  return np.concatenate([r.uniform(-0.8, 0.6, 6), r.uniform(-0.9, 0.9, 3)]).astype(np.float32)


def landmarks68(ident: Array, expr: Array, yaw: Array) -> Array:
  """68 landmarks [68,3] (x, y in [-1,1] image coordinates, z = 0) of the synthetic face."""
  shift = 0.6 * jnp.sin(yaw)
  rx, ry = ident[3], ident[4]
  cy = 0.05
  jaw_t = jnp.linspace(jnp.pi * 0.05, jnp.pi * 0.95, 17)   # 0 = right ear side ... 16 = other side, 8 = chin
  jaw = jnp.stack([shift - rx * jnp.cos(jaw_t), cy + ry * jnp.sin(jaw_t)], -1)
  bt = jnp.linspace(-1.0, 1.0, 5)
  brow_y = jnp.full_like(bt, -0.45) * ry
  brows = jnp.concatenate([jnp.stack([shift - 0.35 * rx + 0.16 * rx * bt, brow_y], -1),
                           jnp.stack([shift + 0.35 * rx + 0.16 * rx * bt, brow_y], -1)])
  nt = jnp.linspace(0.0, 1.0, 4)
  bridge = jnp.stack([shift + 0.0 * nt, -0.15 * ry + 0.35 * ry * nt], -1)        # 27..30, 27 = top of the nose
  nostrils = jnp.stack([shift + 0.1 * rx * jnp.linspace(-1.0, 1.0, 5), jnp.full((5,), 0.22 * ry)], -1)
  et = jnp.linspace(0.0, 2 * jnp.pi, 7)[:-1]
  eye_ry = 0.02 + 0.07 * expr[1]
  eyes = jnp.concatenate([jnp.stack([shift + s * 0.35 * rx + 0.16 * rx * jnp.cos(et), -0.2 * ry + eye_ry * jnp.sin(et)],
                                    -1) for s in (-1.0, 1.0)])
  mry = 0.03 + 0.15 * expr[0]
  mouth_cy = 0.45 * ry
  ot = jnp.linspace(0.0, 2 * jnp.pi, 13)[:-1]
  outer = jnp.stack([shift + 0.35 * rx * jnp.cos(ot), mouth_cy + mry * jnp.sin(ot)], -1)
  it = jnp.linspace(0, 2 * jnp.pi, 9)[:-1]
  inner = jnp.stack([shift + 0.25 * rx * jnp.cos(it), mouth_cy + 0.6 * mry * jnp.sin(it)], -1)
  xy = jnp.concatenate([jaw, brows, bridge, nostrils, eyes, outer, inner])
  return jnp.concatenate([xy, jnp.zeros((68, 1), xy.dtype)], axis=-1).astype(jnp.float32)


def draw_full(ident: Array, expr: Array, yaw: Array, scene: Array, size: int) -> dict[str, Array]:
  """A full frame with torso and background (HTB-SR data), all [S,S,C] in [-1,1] unless noted:

  com_img (head + torso over the clip background), torso_img (neck + shoulders over black, neck extended under
  the head), bg_img, segmap [S,S] int32 class ids, torso_mask [S,S,1] {0,1}, kp [68,3]."""
  head = draw(ident, expr, yaw, size)
  a = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size * 2.0 - 1.0
  y, x = jnp.meshgrid(a, a, indexing="ij")
  sharp = 0.25 * size
  shift = 0.6 * jnp.sin(yaw)
  tshift = 0.2 * jnp.sin(yaw)          # the torso turns less than the head
  rx, ry = ident[3], ident[4]
  g = (y + 1.0) / 2.0
  bg = scene[None, None, 0:3] * (1 - g[..., None]) + scene[None, None, 3:6] * g[..., None]
  clothes = _ellipse(x, y, tshift, 1.15, 1.0, 0.47, sharp)
  neck_full = _ellipse(x, y, 0.5 * (shift + tshift), 0.6, 0.3 * rx, 0.55, sharp)   # reaches under the head
  face = _ellipse(x, y, shift, 0.05, rx, ry, sharp)
  hair = _ellipse(x, y, shift, -0.55 * ry, 1.05 * rx, 0.55 * ry, sharp) * (1 - face * (y > -0.6 * ry))
  head_a = jnp.clip(face + hair, 0.0, 1.0)
  neck = neck_full * (1 - clothes)
  skin = ident[:3]
  cloth_rgb = scene[6:9]
  torso_img = (-1.0) * (1 - clothes[..., None] - neck[..., None]) + cloth_rgb[None, None] * clothes[..., None] \
      + skin[None, None] * neck[..., None]
  torso_a = jnp.clip(clothes + neck, 0.0, 1.0)
  com = bg * (1 - torso_a[..., None]) + torso_img * torso_a[..., None]
  com = com * (1 - head_a[..., None]) + head["image"] * head_a[..., None]
  seg = jnp.zeros((size, size), jnp.int32)
  seg = jnp.where(clothes > 0.5, 4, seg)
  seg = jnp.where(neck > 0.5, 2, seg)
  seg = jnp.where(hair > 0.5, 1, seg)
  seg = jnp.where(face > 0.5, 3, seg)
  torso_mask = ((seg == 2) | (seg == 4))[..., None]
  return {"com_img": jnp.clip(com, -1, 1), "torso_img": jnp.clip(torso_img, -1, 1), "bg_img": jnp.clip(bg, -1, 1),
          "segmap": seg, "torso_mask": torso_mask, "kp": landmarks68(ident, expr, yaw), **head}


def audio_features(expr: Array, n: int = 2, bins: int = 80) -> Array:
  """Mel-like audio features [n, bins] of one video frame (two 50-Hz frames per 25-fps frame): a formant-shaped
  log-mel envelope whose energy follows the mouth opening (a stand-in for mel/HuBERT in the synthetic set)."""
  f = jnp.linspace(0.0, 1.0, bins)
  env = jnp.exp(-((f - 0.2) / 0.08) ** 2) + 0.6 * jnp.exp(-((f - 0.45 - 0.1 * expr[2]) / 0.1) ** 2)
  lvl = jnp.stack([expr[0] * (0.8 + 0.2 * k) for k in range(n)])
  return (-4.0 + 4.0 * lvl[:, None] * env[None, :]).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class SyntheticTalkingHeads:
  """Deterministic random-access set of (ref, tgt) frame pairs from `n_clips` synthetic clips.

  Item i: clip i % n_clips, two frames drawn from a numpy Generator seeded by (seed, i). Shapes for size S:
    ref_img, tgt_img [S,S,3]; cond_cano, cond_src, cond_tgt [S,S,3]; ref_head_mask, tgt_head_mask [S,S,1];
    ref_camera, tgt_camera [25]; ident [6]; ref_expr, tgt_expr [3]; ref_yaw, tgt_yaw [].
  With torso=True (HTB-SR) also: ref_com_img, tgt_com_img, ref_torso_img, bg_img [S,S,3]; ref_segmap [S,S,6]
    one-hot; tgt_torso_mask [S,S,1]; ref_kp, tgt_kp [68,3].
  """
  size: int = 64
  n_clips: int = 16
  n_items: int = 1024
  seed: int = 0
  torso: bool = False

  def __len__(self) -> int:
    return self.n_items

  def codes(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self.n_items:
      raise IndexError(f"synthetic record {index} out of range [0, {self.n_items})")
    clip = index % self.n_clips
    rc = np.random.default_rng([self.seed, 1, clip])
    ident = np.concatenate([rc.uniform(-0.1, 0.8, 3), rc.uniform(0.45, 0.6, 1), rc.uniform(0.6, 0.75, 1),
                            rc.uniform(0.3, 0.9, 1)]).astype(np.float32)
    rf = np.random.default_rng([self.seed, 2, index])
    def frame():
      return (np.array([rf.uniform(0, 1), float(rf.uniform() > 0.2) * rf.uniform(0.6, 1.0), rf.uniform(-1, 1)],
                       np.float32), np.float32(rf.uniform(-0.35, 0.35)))
    (ref_expr, ref_yaw), (tgt_expr, tgt_yaw) = frame(), frame()
    return dict(ident=ident, ref_expr=ref_expr, ref_yaw=ref_yaw, tgt_expr=tgt_expr, tgt_yaw=tgt_yaw)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    c = self.codes(int(index))
    out = render_item(c, self.size)
    if self.torso:
      out.update(render_torso_item(c, scene_codes(self.seed, int(index) % self.n_clips), self.size))
    return {k: np.asarray(v) for k, v in out.items()}


@jax.jit
def _render_item_jit(ident, ref_expr, ref_yaw, tgt_expr, tgt_yaw, size_arr):
  size = size_arr.shape[0]
  ref = draw(ident, ref_expr, ref_yaw, size)
  tgt = draw(ident, tgt_expr, tgt_yaw, size)
  cano = draw(ident, ref_expr, ref_yaw, size, canonical=True)
  return dict(ref_img=ref["image"], tgt_img=tgt["image"], cond_cano=cano["secc"], cond_src=ref["secc"],
              cond_tgt=tgt["secc"], ref_head_mask=ref["head_mask"].astype(jnp.float32),
              tgt_head_mask=tgt["head_mask"].astype(jnp.float32), ref_camera=camera_from_yaw(ref_yaw),
              tgt_camera=camera_from_yaw(tgt_yaw), ident=ident, ref_expr=ref_expr, tgt_expr=tgt_expr,
              ref_yaw=ref_yaw, tgt_yaw=tgt_yaw)


def render_item(codes: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    out = _render_item_jit(codes["ident"], codes["ref_expr"], codes["ref_yaw"], codes["tgt_expr"],
                           codes["tgt_yaw"], np.zeros((size,), np.int8))
  return jax.device_get(out)


@jax.jit
def _render_torso_jit(ident, ref_expr, ref_yaw, tgt_expr, tgt_yaw, scene, size_arr):
  size = size_arr.shape[0]
  ref = draw_full(ident, ref_expr, ref_yaw, scene, size)
  tgt = draw_full(ident, tgt_expr, tgt_yaw, scene, size)
  return dict(ref_com_img=ref["com_img"], tgt_com_img=tgt["com_img"], ref_torso_img=ref["torso_img"],
              bg_img=ref["bg_img"], ref_segmap=jax.nn.one_hot(ref["segmap"], 6, dtype=jnp.float32),
              tgt_torso_mask=tgt["torso_mask"].astype(jnp.float32), ref_kp=ref["kp"], tgt_kp=tgt["kp"])


def render_torso_item(codes: dict[str, np.ndarray], scene: np.ndarray, size: int) -> dict[str, np.ndarray]:
  """The HTB-SR keys of one (ref, tgt) pair (see `SyntheticTalkingHeads`)."""
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    out = _render_torso_jit(codes["ident"], codes["ref_expr"], codes["ref_yaw"], codes["tgt_expr"],
                            codes["tgt_yaw"], scene, np.zeros((size,), np.int8))
  return jax.device_get(out)


def clip_codes(seed: int, clip: int, n_frames: int) -> dict[str, np.ndarray]:
  """Codes of the frames of synthetic clip `clip`: smooth talking / head-turn trajectories with blinks.

  Returns ident [6], scene [9], expr [T,3], yaw [T] (the identity is the one `SyntheticTalkingHeads` uses)."""
  ident = SyntheticTalkingHeads(seed=seed, n_clips=clip + 1, n_items=clip + 1).codes(clip)["ident"]
  r = np.random.default_rng([seed, 5, clip])
  t = np.arange(n_frames, dtype=np.float64) / 25.0   # seconds at 25 fps
  f_mouth, f_yaw, ph = r.uniform(1.5, 4.0), r.uniform(0.1, 0.4), r.uniform(0, 2 * np.pi, 3)
  mouth = np.clip(0.5 + 0.5 * np.sin(2 * np.pi * f_mouth * t + ph[0]) * np.abs(np.sin(0.7 * t + ph[1])), 0, 1)
  blink_at = r.uniform(0, max(t[-1], 1e-3), size=max(1, n_frames // 50))
  eye = np.ones_like(t)
  for b in blink_at:
    eye = np.minimum(eye, np.clip(np.abs(t - b) / 0.12, 0.0, 1.0))
  smile = np.sin(0.5 * t + ph[2]) * r.uniform(0.2, 1.0)
  yaw = 0.3 * np.sin(2 * np.pi * f_yaw * t + ph[1])
  expr = np.stack([mouth, eye, smile], -1).astype(np.float32)
  return dict(ident=ident, scene=scene_codes(seed, clip), expr=expr, yaw=yaw.astype(np.float32))


@jax.jit
def _render_frames_jit(ident, scene, expr, yaw, size_arr):
  size = size_arr.shape[0]

  def one(e, y):
    f = draw_full(ident, e, y, scene, size)
    cano = draw(ident, e, y, size, canonical=True)
    return dict(image=f["com_img"], head_img=f["image"], torso_img=f["torso_img"], bg_img=f["bg_img"],
                secc=f["secc"], cano_secc=cano["secc"], head_mask=f["head_mask"], segmap=f["segmap"],
                camera=camera_from_yaw(y), kp=f["kp"], audio=audio_features(e))
  return jax.vmap(one)(expr, yaw)


def render_clip(seed: int, clip: int, n_frames: int, size: int) -> dict[str, np.ndarray]:
  """All frames of one synthetic clip, stacked [T, ...]: image (com), head_img, torso_img, bg_img, secc,
  cano_secc [T,S,S,3] in [-1,1]; head_mask [T,S,S,1] bool; segmap [T,S,S] int32; camera [T,25]; kp [T,68,3];
  audio [T,2,80]; plus the codes ident [6], scene [9], expr [T,3], yaw [T]."""
  c = clip_codes(seed, clip, n_frames)
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    out = _render_frames_jit(c["ident"], c["scene"], c["expr"], c["yaw"], np.zeros((size,), np.int8))
  return {**jax.device_get(out), **c}


def secc_batch(ident: Array, expr: Array, yaw: Array, size: int) -> Array:
  """Batched SECC re-render [B,S,S,3] from codes (used in-step by the perturbation/blink regularisers)."""
  return jax.vmap(lambda i, e, y: draw(i, e, y, size)["secc"])(ident, expr, yaw)
