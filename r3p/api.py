"""The r3p inference pipeline as a Python API — the one pipeline behind `r3p infer` and the web app.

    from r3p.api import Portrait
    p = Portrait.random_weights(seed=0)                        # or Portrait.from_checkpoints(torso, a2m, hubert)
    for ev in p.animate("Macron.png", "Obama_5s.wav", "out.mp4"):
      print(f"{ev.done}/{ev.total} frames, {ev.fps:.2f} frames/s")
    # out.mp4 now holds the video with the audio muxed

Steps (PIPELINE.md §7.3–7.5, in order): source auto-crop, segmentation, 3DMM fit and source SECCs
(`r3p.face.prepare.prepare_source`); driving motion from audio (HuBERT + A2M, `r3p.audio.drive`), a driving video
(3DMM fit per frame) or a coefficient file; the pose (static, or a pose video/npy mirror-indexed to the clip,
z fixed, mapped to the source pose); EG3D cameras smoothed (k=7); drv keypoints smoothed (k=7); the canonical
planes and SR source cache computed ONCE per portrait (and cached across calls); then fixed-size chunks of frames
(`chunk`, the last one padded) through one compiled network program, SECC rendered in the official 50-frame
blocks, periodic blinks edited in, frames handed to a background video writer while the next chunk computes.
Memory is flat in the clip length: per-frame SECC images exist only for the current 50-frame block.

Determinism: every random draw comes from `seed` (blink durations: `random.Random(seed)` as the official python
`random`; A2M prior noise and the renderer's stratified/importance samples: `jax.random.key(seed)`).

Layouts: images NHWC float32 in [−1, 1]; frames yielded/written as uint8 [H, W, 3] (RGBA for out_mode 'alpha').
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import pathlib
import random
import sys
import time
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FPS = 25
SECC_BLOCK = 50  # the official driver renders drv SECC in chunks of 50 (matters for the face-0 mask quirk)
OUT_MODES = ("final", "concat_debug", "alpha")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
AUDIO_EXT = (".wav", ".mp3", ".m4a", ".flac", ".ogg", ".aac")
RANDOM_WEIGHTS_NOTE = ("r3p: using RANDOM seeded weights: the pictures are meaningless. Get the released "
                       "Real3D-Portrait checkpoints (see the README) and pass --torso_ckpt/--a2m_ckpt/--hubert_ckpt")


class InferError(ValueError):
  """A bad input or setting; the message is one line naming the file or option."""


def user_errors() -> tuple[type[BaseException], ...]:
  """Exception types whose message is a user-facing sentence (shown as one line by the CLI and the app)."""
  from r3p.audio.checkpoints import CheckpointFileError
  from r3p.audio.features import AudioError
  from r3p.convert.torch_ckpt import CheckpointError
  from r3p.convert.torch_to_nnx import StateDictError
  from r3p.face import bfm, landmarks, prepare, segment
  from r3p.video import VideoError

  return (InferError, AudioError, CheckpointError, CheckpointFileError, StateDictError, VideoError,
          landmarks.FaceDetectionError, bfm.FaceModelError, segment.SegmentationError, prepare.PrepareError)


def error_line(e: BaseException) -> str:
  s = str(e).strip()
  return s.splitlines()[0] if s else type(e).__name__


@dataclasses.dataclass
class Options:
  """The official driver's controls (PIPELINE §7.1) plus r3p's streaming ones. Defaults as the official CLI,
  except `seed` (0, not the clock) and `drv_pose` ('static', as the official app when no pose video is given)."""
  drv_pose: str = "static"
  bg_img: Optional[str] = None
  blink_mode: str = "period"           # 'period' | 'none'
  temperature: float = 0.2
  mouth_amp: float = 0.45
  head_torso_threshold: Optional[float] = None  # None: the config's 0.9
  out_mode: str = "final"              # 'final' | 'concat_debug' | 'alpha' (RGBA PNG frames; r3p only)
  map_to_init_pose: bool = True
  seed: int = 0
  min_face_area_percent: float = 0.2
  chunk: int = 16                      # frames per compiled network call (rounded up to a multiple of devices)
  max_frames: Optional[int] = None     # cut the clip (smoke tests, previews)
  devices: int | str = 1               # local devices the chunk is sharded over (batch axis); 'all' = every one

  def num_devices(self) -> int:
    n = len(jax.local_devices())
    if isinstance(self.devices, str):
      if self.devices.strip().lower() == "all":
        return n
      try:
        d = int(self.devices)
      except ValueError:
        raise InferError(f"--devices {self.devices!r}: expected a positive number or 'all'") from None
    else:
      d = int(self.devices)
    if not 1 <= d <= n:
      raise InferError(f"--devices {self.devices}: {n} local device(s) available")
    return d

  def batch(self) -> int:
    """Frames per compiled call: `chunk` rounded up to a multiple of the device count (equal shards)."""
    n = self.num_devices()
    return -(-self.chunk // n) * n

  def check(self):
    if self.out_mode not in OUT_MODES:
      raise InferError(f"--out_mode {self.out_mode!r}: expected one of {', '.join(OUT_MODES)}")
    if self.blink_mode not in ("period", "none"):
      raise InferError(f"--blink_mode {self.blink_mode!r}: expected 'period' or 'none'")
    if not 0.0 <= self.temperature <= 10.0:
      raise InferError(f"--temperature {self.temperature}: out of range [0, 10]")
    if not 0.0 <= self.mouth_amp <= 10.0:
      raise InferError(f"--mouth_amp {self.mouth_amp}: out of range [0, 10]")
    if self.head_torso_threshold is not None and not 0.0 <= self.head_torso_threshold <= 1.0:
      raise InferError(f"--head_torso_threshold {self.head_torso_threshold}: out of range [0, 1]")
    if not 0.0 < self.min_face_area_percent <= 1.0:
      raise InferError(f"--min_face_area_percent {self.min_face_area_percent}: out of range (0, 1]")
    if self.chunk < 1:
      raise InferError(f"--chunk {self.chunk}: must be ≥ 1")
    if self.max_frames is not None and self.max_frames < 1:
      raise InferError(f"--max_frames {self.max_frames}: must be ≥ 1")
    self.num_devices()


@dataclasses.dataclass
class Progress:
  """One event of `Portrait.animate`: stages 'prepare', 'motion', 'depth' (concat_debug's first pass starts),
  then after each chunk ('render') and once at the end ('done', with `path`). `frame` is the last frame written
  (uint8), for live previews."""
  stage: str
  done: int
  total: int
  fps: float = 0.0
  eta_s: float = float("nan")
  elapsed_s: float = 0.0
  frame: Optional[np.ndarray] = None
  path: Optional[pathlib.Path] = None
  message: str = ""


# ---------------------------------------------------------------------------------------------------------------
# Network wrapper: one compiled program per (chunk size, out mode)


def _resize(x, size):
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "linear", antialias=False)


def _nearest_up(x, size):
  """torch `F.interpolate(x, size)` (mode 'nearest': source index floor(i · in / out)), as the official
  concat_debug panels upsample image_raw and depth."""
  h, w = x.shape[1:3]
  iy = (np.arange(size) * h) // size
  ix = (np.arange(size) * w) // size
  return x[:, iy][:, :, ix]


def resolve_dtype(dtype) -> Any:
  """'float32' | 'bfloat16' (or the jnp dtype) -> the jnp dtype; anything else is an `InferError`."""
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise InferError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]
  d = jnp.dtype(dtype)
  if d not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
    raise InferError(f"dtype {d}: expected float32 or bfloat16")
  return d.type


def _volume_depth(model, src, camera, cond_cano, cond_src, cond_tgt, key):
  """Depth image [B,128,128,1] of the volume renderer alone (motion adapter + plane fusion + ray marching; no
  super-resolution, torso or background): the cheap pass behind concat_debug's whole-clip depth range. Same draws
  as `frame` for the same key (the key only feeds the renderer), hence the same depth."""
  if hasattr(model, "depth"):
    return model.depth(src, camera, cond_cano, cond_src, cond_tgt, key=key)
  if not hasattr(model, "secc_img2plane_backbone"):
    return model.frame(src, camera, cond_cano, cond_src, cond_tgt, None, None, key=key)["image_depth"]
  from r3p.models.motion_adapter import fuse_planes
  from r3p.render.renderer import render

  cfg = model.config
  secc = jnp.concatenate([cond_cano, cond_src, cond_tgt], axis=-1)
  planes = fuse_planes(src["cano_planes"], model.secc_img2plane_backbone(secc), mode=cfg.phase1_plane_fusion_mode)
  r = render(planes, model.decoder, camera, key=key, resolution=cfg.neural_rendering_resolution,
             n_coarse=cfg.num_samples_coarse, n_fine=cfg.num_samples_fine, box_warp=cfg.box_warp, dtype=model.dtype)
  return r["depth_image"]


@dataclasses.dataclass
class _Placement:
  """Where a chunk runs: one device (default placement) or a 1-D mesh of n local devices, frames sharded over
  the batch axis and everything else (params, source cache, per-portrait conditions, key) replicated."""
  n: int
  batch: Any = None        # NamedSharding(mesh, P('batch')) or None
  replicated: Any = None   # NamedSharding(mesh, P()) or None

  def frames(self, x):
    return jnp.asarray(x) if self.batch is None else jax.device_put(x, self.batch)

  def shared(self, x):
    return x if self.replicated is None else jax.device_put(x, self.replicated)


class Network:
  """The portrait network (`source` / `frame` methods, e.g. `OSAvatarSECC_Img2plane_Torso`) behind jitted
  functions: `source(prep)` once per portrait, `chunk(...)` for B frames. Any NNX module with those two methods
  works (tests use a small stand-in)."""

  def __init__(self, model: nnx.Module, *, head_threshold: float = 0.9):
    self.graphdef, self.state = nnx.split(model)
    self.default_head_threshold = float(head_threshold)
    self.dtype = jnp.dtype(getattr(model, "dtype", jnp.float32))  # activation dtype the model was built with
    self._source = jax.jit(self._source_impl)
    self._chunk = jax.jit(self._chunk_impl, static_argnames=("out_mode",))
    self._depth_range = jax.jit(self._depth_range_impl)
    self._placements: dict[int, tuple[_Placement, Any]] = {}  # n devices -> (placement, replicated params)
    self.source_calls = 0  # counts canonical-plane computations (the cache test reads it)

  def placement(self, n: int = 1) -> _Placement:
    """The placement for n local devices (params replicated once per n and kept)."""
    if n not in self._placements:
      if n == 1:
        self._placements[1] = (_Placement(1), self.state)
      else:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        mesh = Mesh(np.array(jax.local_devices()[:n]), ("batch",))
        pl = _Placement(n, NamedSharding(mesh, P("batch")), NamedSharding(mesh, P()))
        self._placements[n] = (pl, jax.device_put(self.state, pl.replicated))
    return self._placements[n][0]

  def _state_for(self, pl: _Placement):
    return self._placements[pl.n][1] if pl.n in self._placements else self.state

  def _depth_range_impl(self, state, src, camera, cond_cano, cond_src, cond_tgt, key, valid):
    model = nnx.merge(self.graphdef, state)
    b = camera.shape[0]
    rep = lambda a: jnp.broadcast_to(a, (b,) + a.shape[1:])  # noqa: E731
    d = _volume_depth(model, jax.tree.map(rep, src), camera, rep(cond_cano), rep(cond_src), cond_tgt, key)
    d = d.astype(jnp.float32).reshape(b, -1)
    m = valid[:, None]  # padded frames of the last chunk do not count
    return jnp.min(jnp.where(m, d, jnp.inf)), jnp.max(jnp.where(m, d, -jnp.inf))

  def _source_impl(self, state, img, torso, bg, segmap):
    return nnx.merge(self.graphdef, state).source(img, torso, bg, segmap)

  def _chunk_impl(self, state, src, camera, cond_cano, cond_src, cond_tgt, kp_s, kp_d, key, head_threshold, *,
                  out_mode):
    model = nnx.merge(self.graphdef, state)
    b = camera.shape[0]
    rep = lambda a: jnp.broadcast_to(a, (b,) + a.shape[1:])  # noqa: E731
    src_b = jax.tree.map(rep, src)
    out = model.frame(src_b, camera, rep(cond_cano), rep(cond_src), cond_tgt, rep(kp_s), kp_d, key=key,
                      head_threshold=head_threshold)
    image = jnp.clip(out["image"].astype(jnp.float32), -1.0, 1.0)
    size = image.shape[1]
    if out_mode == "final":
      return {"image": image}
    if out_mode == "alpha":
      from r3p.models.superres import person_alpha

      head = _resize(out["weights_img"].astype(jnp.float32), size)
      occ = out.get("occlusion_2")
      occ = jnp.zeros_like(head) if occ is None else _resize(occ.astype(jnp.float32), size)
      return {"image": image, "alpha": person_alpha(head, occ, head_threshold)}
    # Official concat_debug: image_raw and depth upsampled with torch's default 'nearest'.
    raw = _nearest_up(jnp.clip(out["image_raw"].astype(jnp.float32), -1.0, 1.0), size)
    depth = _nearest_up(out["image_depth"].astype(jnp.float32), size)
    return {"image": image, "raw": raw, "depth": depth}

  def source(self, prep: dict) -> Any:
    self.source_calls += 1
    f = lambda k: jnp.asarray(prep[k], jnp.float32)  # noqa: E731
    return self._source(self.state, f("img"), f("ref_torso_img"), f("bg_img"), f("segmap"))

  def chunk(self, src, camera, cond_cano, cond_src, cond_tgt, kp_s, kp_d, key, head_threshold, out_mode,
            placement: _Placement | None = None):
    """B frames -> dict of output arrays. With a multi-device `placement`, src / cond_cano / cond_src / kp_s must
    already be replicated on its mesh (`placement.shared`); the per-frame inputs are sharded here."""
    pl = placement or self.placement(1)
    return self._chunk(self._state_for(pl), src, pl.frames(camera), cond_cano, cond_src, pl.frames(cond_tgt), kp_s,
                       pl.frames(kp_d), pl.shared(key), pl.shared(jnp.float32(head_threshold)), out_mode=out_mode)

  def depth_range(self, src, camera, cond_cano, cond_src, cond_tgt, key, valid,
                  placement: _Placement | None = None) -> tuple[float, float]:
    """(min, max) of the volume-rendered depth over the frames where `valid` (bool [B])."""
    pl = placement or self.placement(1)
    lo, hi = self._depth_range(self._state_for(pl), src, pl.frames(camera), cond_cano, cond_src,
                               pl.frames(cond_tgt), pl.shared(key), pl.frames(np.asarray(valid, bool)))
    return float(lo), float(hi)


def random_portrait_model(seed: int = 0, **kw) -> nnx.Module:
  """The full network with seeded random weights, filled on the host: the module is built abstractly and every
  variable gets a draw from `numpy.random.default_rng([seed, crc32(name)])` — N(0, 1/fan_in) for weights, 0 for
  biases and running means, 1 for norm scales and running variances. (A jitted NNX init of ~150 M parameters takes
  minutes to compile on CPU; this takes seconds.) Deterministic per seed; the pictures are meaningless."""
  import zlib

  from r3p.models import portrait

  model = nnx.eval_shape(lambda: portrait.OSAvatarSECC_Img2plane_Torso(rngs=nnx.Rngs(seed), **kw))
  for path, var in nnx.to_flat_state(nnx.state(model)):
    v = var.get_value()
    if not isinstance(v, jax.ShapeDtypeStruct):
      continue
    name = ".".join(map(str, path))
    last = str(path[-1])
    shape = tuple(v.shape)
    if "var" in last or (len(shape) == 1 and ("norm" in name or last in ("scale", "gamma"))):
      arr = np.ones(shape, np.float32)
    elif len(shape) <= 1 or "bias" in last or "mean" in last:
      arr = np.zeros(shape, np.float32)
    else:
      fan_in = int(np.prod(shape[:-1]))
      rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
      arr = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(max(fan_in, 1))
    var.set_value(jnp.asarray(arr, v.dtype))
  return model


# ---------------------------------------------------------------------------------------------------------------
# Driving motion


@dataclasses.dataclass
class Driving:
  """Per-frame driving signals for T frames (all small: no images)."""
  exp: np.ndarray          # [T,64]
  euler: np.ndarray        # [T,3]
  trans: np.ndarray        # [T,3]
  camera: np.ndarray       # [T,25] smoothed
  kp_d: np.ndarray         # [T,68,3] smoothed
  blinks: dict             # frame -> eye-closure fraction
  audio: Optional[str]     # file whose audio is muxed (None: silent video)
  audio_optional: bool = False  # a driving video without an audio stream is not an error

  @property
  def num_frames(self) -> int:
    return int(self.exp.shape[0])


def _load_coeff_file(path: str) -> dict:
  p = str(path)
  try:
    if p.endswith(".npz"):
      with np.load(p) as z:
        return {k: z[k] for k in z.files}
    obj = np.load(p, allow_pickle=True)  # the official coefficient .npy is a pickled dict of arrays
    obj = obj.item() if obj.dtype == object else {"exp": obj}
    if not isinstance(obj, dict):
      raise ValueError("not a dict")
    return obj
  except Exception as e:  # noqa: BLE001 (reported as one line)
    raise InferError(f"{path}: cannot read the coefficient file ({error_line(e)})") from None


def _file_digest(path) -> str:
  h = hashlib.sha1()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


class _SeccStream:
  """Driving SECC frames rendered lazily in the official 50-frame blocks, blinks applied per frame as it is read;
  holds one block (the previous one is released before the next is rendered, so two never coexist)."""

  def __init__(self, renderer, id_coeff, exp, blinks):
    self.renderer, self.id, self.exp, self.blinks = renderer, id_coeff, exp, blinks
    self._start, self._block = -1, None
    self._last = (-1, None)  # the last blink-edited frame (a padded last chunk reads its last frame repeatedly)

  def get(self, i: int) -> np.ndarray:
    start = (i // SECC_BLOCK) * SECC_BLOCK
    if start != self._start:
      # The clip's last (shorter) block is rendered at its own size, as the official driver does: padding it to
      # 50 frames would save one compilation of the renderer but moves its float rounding (frames differ by one
      # uint8 level at a few pixels), and the frames must stay identical.
      self._block = None  # release the previous block before rendering the next one
      self._block = self.renderer.render(self.id, self.exp[start:start + SECC_BLOCK], chunk=SECC_BLOCK,
                                         masks=False)[0]
      self._start = start
    if i not in self.blinks:
      return self._block[i - start]
    if self._last[0] != i:
      from r3p.face import secc

      # Same edit as `secc.apply_blinks` on the block, one frame at a time (no copy of the whole block).
      self._last = (i, secc.blink_eye_for_secc(self._block[i - start], float(np.clip(self.blinks[i], 0.0, 1.0))))
    return self._last[1]


# ---------------------------------------------------------------------------------------------------------------
# The pipeline


class Portrait:
  """Networks loaded once; `animate(...)` many times. Canonical planes are cached per (portrait, background)."""

  def __init__(self, network: Network, audio_driver, face_model, *, landmarker=None, segmenter=None,
               random_weights: bool = False, cache_size: int = 4, log: Callable[[str], None] | None = None):
    from r3p.face import landmarks, prepare, secc

    self.network = network
    self.audio_driver = audio_driver
    self.face_model = face_model
    self.landmarker = landmarks.resolve_task_path(landmarker)
    self.segmenter = prepare.find_segmenter(segmenter)
    if self.segmenter is None:
      raise InferError(f"no segmentation model: pass segmenter= (selfie_multiclass_256x256.tflite or "
                       f"selfie_segmentation.tflite) or put one in ${landmarks.ENV_DIR}")
    self.random_weights = random_weights
    self.renderer = secc.SeccRenderer(face_model, prepare.SIZE)
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._cache_size = cache_size
    self.log = log or (lambda s: print(s, file=sys.stderr))

  # ------------------------------------------------------------------ construction
  @classmethod
  def random_weights(cls, seed: int = 0, *, landmarker=None, segmenter=None, bfm_dir=None, hubert_config=None,
                     model: nnx.Module | Callable[..., nnx.Module] | None = None, dtype="float32",
                     **kw) -> "Portrait":
    """Seeded random weights for every network and (without bfm_dir) the synthetic face model. For smoke tests:
    the pictures are meaningless. `model` replaces the portrait network (tests pass a small stand-in): a module,
    used as built, or a factory called as `model(dtype=...)`. dtype: the portrait network's activation dtype,
    'float32' (default) or 'bfloat16' (params stay float32)."""
    from r3p.audio.drive import AudioToMotion
    from r3p.face import bfm, landmarks

    log = kw.get("log") or (lambda s: print(s, file=sys.stderr))
    log(RANDOM_WEIGHTS_NOTE)
    task = landmarks.resolve_task_path(landmarker)
    face = bfm.default_face_model(bfm_dir, task, log=log)
    dt = resolve_dtype(dtype)
    if model is None:
      model = random_portrait_model(seed, dtype=dt)
    elif not isinstance(model, nnx.Module):
      model = model(dtype=dt)
    net = Network(model)
    return cls(net, AudioToMotion.random(seed, hubert_config), face, landmarker=task, segmenter=segmenter,
               random_weights=True, **kw)

  @classmethod
  def from_checkpoints(cls, torso_ckpt, a2m_ckpt=None, hubert_ckpt=None, *, landmarker=None, segmenter=None,
                       bfm_dir=None, dtype="float32", **kw) -> "Portrait":
    """Either an r3p checkpoint folder written by `python -m r3p.convert` (`from_checkpoints(dir)`, fast), or the
    official files: torso_ckpt / a2m_ckpt = a `model_ckpt_steps_*.ckpt` file or its folder (newest step),
    hubert_ckpt = a transformers HuBERT-large folder or weights file. dtype: the portrait network's activation
    dtype ('float32' default, or 'bfloat16'; params stay float32)."""
    from r3p.audio.drive import AudioToMotion
    from r3p.convert import cli as convert_cli
    from r3p.convert import torch_ckpt
    from r3p.face import bfm, landmarks
    from r3p.models import portrait

    log = kw.get("log") or (lambda s: print(s, file=sys.stderr))
    dt = resolve_dtype(dtype)
    if torso_ckpt is not None and (pathlib.Path(torso_ckpt) / convert_cli.MANIFEST).is_file():
      man = convert_cli.load_manifest(torso_ckpt)
      missing = {"torso", "a2m", "hubert"} - set(man["networks"])
      if missing:
        raise InferError(f"{torso_ckpt}: the r3p checkpoint lacks {', '.join(sorted(missing))}")
      model, driver = convert_cli.load_torso(torso_ckpt, dtype=dt), convert_cli.load_audio_driver(torso_ckpt)
    else:
      torso_file, a2m_file = newest_ckpt(torso_ckpt, "--torso_ckpt"), newest_ckpt(a2m_ckpt, "--a2m_ckpt")
      if hubert_ckpt is None or not os.path.exists(hubert_ckpt):
        raise InferError(f"--hubert_ckpt {hubert_ckpt}: HuBERT-large weights folder or file not found")
      sd = torch_ckpt.extract_state_dict(torch_ckpt.load_torch_checkpoint(torso_file, allow_unknown=True),
                                         where=str(torso_file))
      if not any(k.startswith("cano_img2plane_backbone.") for k in sd):
        raise InferError(f"{torso_file}: not a secc2plane_torso checkpoint (no cano_img2plane_backbone.* keys)")
      model = portrait.build(sd, dtype=dt)
      del sd
      driver = AudioToMotion.from_checkpoints(hubert_ckpt, str(a2m_file))
    task = landmarks.resolve_task_path(landmarker)
    face = bfm.default_face_model(bfm_dir, task, log=log)
    return cls(Network(model), driver, face, landmarker=task, segmenter=segmenter, **kw)

  # ------------------------------------------------------------------ source (cached)
  def prepare(self, src_img, bg_img=None, min_face_area_percent: float = 0.2) -> dict:
    """Source preparation + canonical planes, cached by file contents. Returns the prepared dict with the network's
    source cache under 'net_src' and `cached` = whether it came from the cache."""
    from r3p.face import landmarks, prepare

    for p, what in ((src_img, "--src_img"), (bg_img, "--bg_img")):
      if p is not None and not os.path.isfile(p):
        raise InferError(f"{what} {p}: file not found")
    key = (_file_digest(src_img), _file_digest(bg_img) if bg_img else None, float(min_face_area_percent))
    if key in self._cache:
      self._cache.move_to_end(key)
      entry = self._cache[key]
      entry["cached"] = True
      return entry
    prep = prepare.prepare_source(str(src_img), self.face_model, self.landmarker, self.segmenter,
                                  min_face_area_percent=min_face_area_percent, renderer=self.renderer,
                                  log=self.log)
    if bg_img:
      bg = landmarks.read_image_rgb(bg_img)
      prepare.check_image(bg, str(bg_img))
      prep["bg_img"] = prepare.to_pm1(prepare._resize(bg))[None]  # official: resized to 512², aspect not kept
    keep = ("img", "ref_gt_img", "cond_cano", "cond_src", "ref_torso_img", "bg_img", "segmap", "kp_s", "camera",
            "id", "exp", "euler", "trans", "images_u8", "lm478")
    entry = {k: prep[k] for k in keep}
    entry["net_src"] = jax.block_until_ready(self.network.source(entry))
    entry["cached"] = False
    self._cache[key] = entry
    while len(self._cache) > self._cache_size:
      self._cache.popitem(last=False)
    return entry

  # ------------------------------------------------------------------ driving signals
  def driving(self, prep: dict, drv_aud, opts: Options) -> Driving:
    from r3p.face import bfm, prepare

    drv = str(drv_aud)
    if not os.path.isfile(drv):
      raise InferError(f"--drv_aud {drv}: file not found")
    ext = pathlib.Path(drv).suffix.lower()
    audio, audio_optional = None, False
    if ext in AUDIO_EXT:
      exp = self._audio_motion(drv, opts)
      audio = drv
    elif ext == ".mp4":
      exp = prepare.fit_driving_video(drv, self.face_model, self.landmarker)["exp"]
      audio, audio_optional = drv, True
    elif ext in (".npy", ".npz"):
      coeffs = _load_coeff_file(drv)
      if "exp" not in coeffs:
        raise InferError(f"{drv}: the coefficient file has no 'exp' array")
      exp = np.asarray(coeffs["exp"], np.float32).reshape(-1, bfm.EXP_DIM)
    else:
      raise InferError(f"--drv_aud {drv}: unsupported format {ext or '(none)'} (audio {'/'.join(AUDIO_EXT)}, "
                       ".mp4 video, or .npy/.npz coefficients)")
    if opts.max_frames:
      exp = exp[:opts.max_frames]
    t = exp.shape[0]
    if t == 0:
      raise InferError(f"{drv}: no frame to drive")
    euler, trans = self._pose(prep, opts, t)
    ids = np.broadcast_to(prep["id"].reshape(1, bfm.ID_DIM), (t, bfm.ID_DIM))
    kp = np.asarray(bfm.kp68_for_network(self.face_model, ids, exp, euler, trans))
    # k=7 symmetric padding needs ≥ 3 frames (the official driver fails below that); shorter clips stay unsmoothed.
    kp = (bfm.smooth_features_xd(kp, 7) if t >= 3 else kp).astype(np.float32)
    cam = bfm.smooth_camera_sequence(np.asarray(bfm.eg3d_camera(euler, trans)), 7).astype(np.float32)
    from r3p.face import secc

    blinks = secc.periodic_blink_schedule(t, random.Random(opts.seed)) if opts.blink_mode == "period" else {}
    return Driving(exp=exp, euler=euler, trans=trans, camera=cam, kp_d=kp, blinks=blinks, audio=audio,
                   audio_optional=audio_optional)

  def _audio_motion(self, path: str, opts: Options) -> np.ndarray:
    from r3p.audio import features as F

    audio = F.load_audio(path)
    if audio.num_samples < F.N_FFT:
      raise InferError(f"{path}: audio too short ({audio.num_samples} samples at 16 kHz)")
    if float(np.max(np.abs(audio.samples))) < 1e-4:
      raise InferError(f"{path}: the audio is silent (nothing to lip-sync)")
    feats, secs = F.extract_features(audio), audio.seconds
    del audio
    out = self.audio_driver.from_features(feats, secs, mouth_amp=opts.mouth_amp, temperature=opts.temperature,
                                          seed=opts.seed, blink="none", progress=False)
    return out["exp"]

  def _pose(self, prep: dict, opts: Options, t: int):
    from r3p.face import bfm, prepare

    pose = opts.drv_pose or "static"
    if pose == "static":
      drv_e, drv_t = prep["euler"].reshape(1, 3), prep["trans"].reshape(1, 3)
    elif not os.path.isfile(pose):
      raise InferError(f"--drv_pose {pose}: file not found (or pass 'static')")
    elif pose.lower().endswith(".mp4"):
      fitted = prepare.fit_driving_video(pose, self.face_model, self.landmarker)
      drv_e, drv_t = fitted["euler"], fitted["trans"]
    elif pose.lower().endswith((".npy", ".npz")):
      c = _load_coeff_file(pose)
      if "euler" not in c or "trans" not in c:
        raise InferError(f"--drv_pose {pose}: needs 'euler' and 'trans' arrays")
      drv_e, drv_t = np.asarray(c["euler"], np.float32).reshape(-1, 3), np.asarray(c["trans"], np.float32).reshape(-1, 3)
    else:
      raise InferError(f"--drv_pose {pose}: expected 'static', an .mp4 or a .npy/.npz pose file")
    return bfm.driving_pose(prep["euler"], prep["trans"], drv_e, drv_t, t, opts.map_to_init_pose)

  # ------------------------------------------------------------------ frames
  @staticmethod
  def _chunks(b: int, t: int):
    """(start, frame indices (last chunk padded with its last frame), number of real frames) of every chunk."""
    for c0 in range(0, t, b):
      yield c0, np.minimum(np.arange(c0, c0 + b), t - 1), min(b, t - c0)

  def depth_range(self, prep: dict, drv: Driving, opts: Options, *, placement=None,
                  inputs=None) -> tuple[float, float]:
    """Min and max of the volume-rendered depth over the WHOLE clip (the official concat_debug normalises the
    depth panel by them). A cheap first pass: only the motion adapter and the renderer run (no super-resolution,
    torso or background), with the same per-chunk keys as the frames (hence the same depth), keeping two numbers
    per chunk — memory stays flat in the clip length."""
    from r3p.face import bfm

    t, b = drv.num_frames, opts.batch()
    pl = placement or self.network.placement(opts.num_devices())
    if inputs is None:
      inputs = self._shared_inputs(prep, drv, pl)
    src, cond_cano, cond_src = inputs["src"], inputs["cond_cano"], inputs["cond_src"]
    stream = _SeccStream(self.renderer, prep["id"].reshape(1, bfm.ID_DIM), drv.exp, drv.blinks)
    base_key = jax.random.key(opts.seed)
    lo, hi = np.inf, -np.inf
    for c0, idx, n in self._chunks(b, t):
      tgt = np.stack([stream.get(int(i)) for i in idx])
      c_lo, c_hi = self.network.depth_range(src, drv.camera[idx], cond_cano, cond_src, tgt,
                                            jax.random.fold_in(base_key, c0 // b), np.arange(b) < n, pl)
      lo, hi = min(lo, c_lo), max(hi, c_hi)
    return lo, hi

  def _shared_inputs(self, prep: dict, drv: Driving, pl) -> dict:
    """Per-portrait network inputs, placed (replicated on a multi-device mesh)."""
    from r3p.face import bfm

    ids = prep["id"].reshape(1, bfm.ID_DIM)
    # Official source SECC of the driver: (id, first driving expression), rendered alone, never blink-edited.
    cond_src = self.renderer.render(ids, drv.exp[:1])[0]
    return {"src": pl.shared(prep["net_src"]), "cond_cano": pl.shared(jnp.asarray(prep["cond_cano"])),
            "cond_src": pl.shared(jnp.asarray(cond_src)), "kp_s": pl.shared(jnp.asarray(prep["kp_s"]))}

  def frames(self, prep: dict, drv: Driving, opts: Options) -> Iterator[np.ndarray]:
    """uint8 frames of the clip, computed `opts.batch()` at a time (the last chunk padded by repeating its last
    frame), sharded over `opts.devices` local devices."""
    from r3p.face import bfm
    from r3p.video import to_uint8

    t, b = drv.num_frames, opts.batch()
    pl = self.network.placement(opts.num_devices())
    shared = self._shared_inputs(prep, drv, pl)
    stream = _SeccStream(self.renderer, prep["id"].reshape(1, bfm.ID_DIM), drv.exp, drv.blinks)
    thr = self.network.default_head_threshold if opts.head_torso_threshold is None else opts.head_torso_threshold
    base_key = jax.random.key(opts.seed)
    depth_range = self.depth_range(prep, drv, opts, placement=pl, inputs=shared) \
        if opts.out_mode == "concat_debug" else None
    ref_u8 = to_uint8(prep["ref_gt_img"][0])
    chunks = self._chunks(b, t)
    pending = None  # (device outputs, host inputs) of the chunk in flight: host work overlaps the device
    while True:
      c = next(chunks, None)
      if c is not None:
        c0, idx, n = c
        tgt = np.stack([stream.get(int(i)) for i in idx])
        out = self.network.chunk(shared["src"], drv.camera[idx], shared["cond_cano"], shared["cond_src"], tgt,
                                 shared["kp_s"], drv.kp_d[idx], jax.random.fold_in(base_key, c0 // b), thr,
                                 opts.out_mode, pl)
        nxt = (out, tgt, n)
      else:
        nxt = None
      if pending is not None:
        out_p, tgt_p, n = pending
        host = {k: np.asarray(v)[:n] for k, v in out_p.items()}
        for j in range(n):
          img = to_uint8(host["image"][j])
          if opts.out_mode == "final":
            yield img
          elif opts.out_mode == "alpha":
            a = (np.clip(host["alpha"][j], 0, 1) * 255).astype(np.uint8)
            yield np.concatenate([img, a], -1)
          else:
            # Official: min-max over the whole clip (first pass above), ×2−1, clamped, 3 channels.
            lo, hi = depth_range
            d = (host["depth"][j] - lo) / max(hi - lo, 1e-8) * 2 - 1
            d = np.repeat(np.clip(d, -1, 1), 3, -1) if d.shape[-1] == 1 else d
            yield np.concatenate([ref_u8, to_uint8(tgt_p[j]), to_uint8(host["raw"][j]), to_uint8(d), img], 1)
      pending = nxt
      if pending is None:
        break

  def animate(self, src_img, drv_aud, out_name, **options) -> Iterator[Progress]:
    """Run the whole pipeline, yielding `Progress` events; the last one (stage 'done') carries the output path.
    Options: see `Options`. out_mode 'alpha' writes a folder of RGBA PNGs named after out_name (without .mp4).
    Nothing is left under out_name on failure."""
    from r3p.video import Mp4Writer, PngSequenceWriter

    opts = Options(**options)
    opts.check()
    out = pathlib.Path(out_name)
    if opts.out_mode != "alpha" and out.suffix.lower() != ".mp4":
      raise InferError(f"--out_name {out_name}: expected an .mp4 path")
    t0 = time.perf_counter()
    yield Progress("prepare", 0, 0, message="preparing the source portrait")
    prep = self.prepare(src_img, opts.bg_img, opts.min_face_area_percent)
    yield Progress("motion", 0, 0, elapsed_s=time.perf_counter() - t0,
                   message="canonical planes reused" if prep["cached"] else "canonical planes computed")
    drv = self.driving(prep, drv_aud, opts)
    total = drv.num_frames
    if opts.out_mode == "alpha":
      writer = PngSequenceWriter(out.with_suffix("") if out.suffix else out)
    else:
      writer = Mp4Writer(out, fps=FPS, audio=drv.audio, audio_optional=drv.audio_optional)
    if opts.out_mode == "concat_debug":
      yield Progress("depth", 0, total, elapsed_s=time.perf_counter() - t0,
                     message="whole-clip depth range (renderer-only first pass)")
    done, t_start, batch = 0, time.perf_counter(), opts.batch()
    try:
      for frame in self.frames(prep, drv, opts):
        writer.write(frame)
        done += 1
        if done % batch == 0 or done == total:
          el = time.perf_counter() - t_start
          fps = done / el if el > 0 else 0.0
          yield Progress("render", done, total, fps=fps, eta_s=(total - done) / fps if fps else float("nan"),
                         elapsed_s=time.perf_counter() - t0, frame=frame)
      path = writer.close()
    except BaseException:
      writer.abort()
      raise
    el = time.perf_counter() - t_start
    yield Progress("done", done, total, fps=done / el if el > 0 else 0.0, eta_s=0.0,
                   elapsed_s=time.perf_counter() - t0, path=path)

  def generate(self, src_img, drv_aud, out_name, *, progress: bool = True, **options) -> pathlib.Path:
    """`animate` run to the end with a tqdm bar (frames/s, ETA); returns the output path."""
    from tqdm import tqdm

    bar = None
    path = None
    for ev in self.animate(src_img, drv_aud, out_name, **options):
      if ev.stage == "render":
        if bar is None:
          bar = tqdm(total=ev.total, desc="r3p infer", unit="frame", disable=not progress)
        bar.update(ev.done - bar.n)
      elif ev.stage == "done":
        path = ev.path
    if bar is not None:
      bar.close()
    return path


def newest_ckpt(path, what: str) -> pathlib.Path:
  """A `.ckpt` file, or the newest `model_ckpt_steps_*.ckpt` in a folder (the official rule)."""
  import re

  if path is None:
    raise InferError(f"{what}: not given")
  p = pathlib.Path(path)
  if p.is_file():
    return p
  if not p.is_dir():
    raise InferError(f"{what} {path}: no such checkpoint file or folder")
  cands = sorted(p.glob("model_ckpt_steps_*.ckpt"),
                 key=lambda q: int(re.findall(r"\d+", q.stem)[-1]) if re.findall(r"\d+", q.stem) else -1)
  if not cands:
    raise InferError(f"{what} {path}: no model_ckpt_steps_*.ckpt in this folder")
  return cands[-1]
