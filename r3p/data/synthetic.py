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


@dataclasses.dataclass(frozen=True)
class SyntheticTalkingHeads:
  """Deterministic random-access set of (ref, tgt) frame pairs from `n_clips` synthetic clips.

  Item i: clip i % n_clips, two frames drawn from a numpy Generator seeded by (seed, i). Shapes for size S:
    ref_img, tgt_img [S,S,3]; cond_cano, cond_src, cond_tgt [S,S,3]; ref_head_mask, tgt_head_mask [S,S,1];
    ref_camera, tgt_camera [25]; ident [6]; ref_expr, tgt_expr [3]; ref_yaw, tgt_yaw [].
  """
  size: int = 64
  n_clips: int = 16
  n_items: int = 1024
  seed: int = 0

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
    return {k: np.asarray(v) for k, v in render_item(c, self.size).items()}


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


def secc_batch(ident: Array, expr: Array, yaw: Array, size: int) -> Array:
  """Batched SECC re-render [B,S,S,3] from codes (used in-step by the perturbation/blink regularisers)."""
  return jax.vmap(lambda i, e, y: draw(i, e, y, size)["secc"])(ident, expr, yaw)
