"""Super-resolution with head/torso/background fusion: `SuperresolutionHybrid8XDC_Warp` (fusion v2), Flax NNX.

Reference: modules/real3d/super_resolution/sr_with_ref.py of Real3D-Portrait with the released config
(`torso_model_version` v2, `weight_fuse` True, `htbsr_head_weight_fuse_mode` v2, `sr_antialias` True,
noise_mode 'none', ws = ones). MODEL.md §1.5, §2.11.

Per frame (NHWC; x is the 32-channel neural feature image, rgb = x[..., :3] unclamped, weights = opacity):
  rgb_256, weights_256 = AA-resize(rgb, weights → 256)          (torch bilinear, antialias=True)
  x, rgb = block0(x, rgb, ws)                                   128² → 256², 256 ch (+ skip rgb)
  rgb_torso, aux = torso_model(cache, kp_s, kp_d, rgb_256, weights_256)
  x_torso = torso_encoder(aux.deformed_torso_hid)               1×1 conv 64 → 256
  α = weights_256 (the official "clamp α to weights" is a no-op)
  rgb = rgb·α + rgb_torso·(1−α);  x = fuse_head_torso_convs(cat[x·α, x_torso·(1−α)])
  x, rgb = head_torso_block(x, rgb, ws)                          256², image not upsampled
  person = clamp(occlusion_2 + where(α > thr, 1, α), 0, 1)       (occlusion_2 is already 256²: AA-resize = id)
  rgb = rgb·person + ref_bg_rgb_256·(1−person);  x = fuse_fg_bg_convs(cat[x·person, x_bg·(1−person)])
  x, rgb = block1(x, rgb, ws)                                    256² → 512²
  image = clamp(rgb, −1, 1)
Source only (`precompute`): ref_torso_rgb_256 / ref_bg_rgb_256 = AA-resize(512 → 256) (a true anti-aliased
downsample), x_bg = bg_encoder(ref_bg_rgb_256), and the torso model's source cache.

Weights: child names equal the torch state_dict prefixes below `superresolution.`; load with
    load_state_dict(model, fold_spectral_norm(sd), prefix="superresolution.", unused=UNUSED_KEYS)
(`superresolution.torso_model.*` are the torso model's keys, see r3p.models.torso_warp).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from r3p.nn.layers import Conv2d, default_precision
from r3p.nn.resize import resize_bilinear
from r3p.nn.stylegan2 import Buffer, SynthesisBlock, SynthesisBlockNoUp, setup_filter

Array = jax.Array

# Keys below `superresolution.` that the released config never uses: the alpha predictor of fusion mode v3.
UNUSED_KEYS: tuple[str, ...] = tuple(f"head_torso_alpha_predictor.{i}.{p}" for i in (0, 2, 4)
                                     for p in ("weight", "bias"))

W_DIM = 512
INPUT_RESOLUTION = 128   # neural rendering resolution the SR expects
MID_RESOLUTION = 256     # block0 / torso / background resolution
NUM_WS = 3               # each SR block consumes 3 w vectors (conv0, conv1, torgb)


class LeakyReLU(nnx.Module):
  """torch.nn.LeakyReLU (default slope 0.01): a parameter-free slot in a torch Sequential."""

  def __init__(self, negative_slope: float = 0.01):
    self.negative_slope = negative_slope

  def __call__(self, x: Array) -> Array:
    return jnp.where(x >= 0, x, x * jnp.asarray(self.negative_slope, x.dtype))


def _sequential(layers, x: Array) -> Array:
  for m in layers:
    x = m(x)
  return x


def _check(name: str, a: Array, shape: tuple) -> None:
  """Raise a one-line error unless `a` has `shape` (None = any size)."""
  if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
    want = "[" + ",".join("B" if s is None else str(s) for s in shape) + "]"
    raise ValueError(f"{name} must be {want} (NHWC), got {tuple(a.shape)}")


def alpha_blend(rgb_fg: Array, x_fg: Array, rgb_bg: Array, x_bg: Array, alpha: Array) -> tuple[Array, Array]:
  """Official fusion step: rgb = rgb_fg·α + rgb_bg·(1−α) (float32) and x = cat([x_fg·α, x_bg·(1−α)]) (channels).

  alpha: [B,H,W,1] in [0,1]. The features stay in x_fg's dtype."""
  a = alpha.astype(jnp.float32)
  rgb = rgb_fg.astype(jnp.float32) * a + rgb_bg.astype(jnp.float32) * (1 - a)
  ad = a.astype(x_fg.dtype)
  x = jnp.concatenate([x_fg * ad, x_bg.astype(x_fg.dtype) * (1 - ad)], axis=-1)
  return rgb, x


def person_alpha(head_alpha: Array, torso_occlusion: Array, head_threshold: float | Array) -> Array:
  """clamp(torso_occlusion + head_occ, 0, 1) with head_occ = head_alpha where ≤ threshold, else 1."""
  a = head_alpha.astype(jnp.float32)
  head_occ = jnp.where(a > head_threshold, jnp.ones_like(a), a)
  return jnp.clip(torso_occlusion.astype(jnp.float32) + head_occ, 0.0, 1.0)


class SuperresolutionHybrid8XDC_Warp(nnx.Module):  # noqa: N801 (official class name)
  """HTB-SR of the released Real3D-Portrait model; see the module docstring.

  Args:
    channels: channels of the neural feature image (32).
    sr_antialias: the official `sr_antialias` (True in the released model).
    with_torso: build the torso warp model child (`torso_model`). False is for tests that feed recorded torso
      outputs (`fuse`), and then `__call__` needs them passed explicitly.
  """

  def __init__(self, channels: int = 32, *, sr_antialias: bool = True, with_torso: bool = True,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.sr_antialias = sr_antialias
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.block0 = SynthesisBlock(channels, 256, w_dim=W_DIM, resolution=256, img_channels=3, **kw)
    self.block1 = SynthesisBlock(256, 128, w_dim=W_DIM, resolution=512, img_channels=3, **kw)
    if with_torso:
      from r3p.models.torso_warp import WarpBasedTorsoModelMediaPipe  # another component; import on demand
      self.torso_model = WarpBasedTorsoModelMediaPipe(**kw)
    else:
      self.torso_model = None
    self.torso_encoder = nnx.List([Conv2d(64, 256, 1, **kw)])
    self.bg_encoder = nnx.List([
        Conv2d(3, 64, 3, padding=1, **kw), LeakyReLU(),
        Conv2d(64, 256, 3, padding=1, **kw), LeakyReLU(),
        Conv2d(256, 256, 3, padding=1, **kw)])
    self.fuse_head_torso_convs = nnx.List([
        Conv2d(512, 256, 3, padding=1, **kw), LeakyReLU(),
        Conv2d(256, 256, 3, padding=1, **kw)])
    self.head_torso_block = SynthesisBlockNoUp(256, 256, w_dim=W_DIM, resolution=256, img_channels=3, **kw)
    self.fuse_fg_bg_convs = nnx.List([
        Conv2d(512, 64, 1, **kw), LeakyReLU(),
        Conv2d(64, 256, 3, padding=1, **kw), LeakyReLU(),
        Conv2d(256, 256, 3, padding=1, **kw)])

  # ------------------------------------------------------------------------------------------------ helpers
  def _resize(self, x: Array, size: int) -> Array:
    return resize_bilinear(x, (size, size), antialias=self.sr_antialias)

  @staticmethod
  def default_ws(batch: int) -> Array:
    """The official SR ws: `ones_ws[:, -1:]` expanded to [batch, 3, 512] (all ones)."""
    return jnp.ones((batch, NUM_WS, W_DIM), jnp.float32)

  # ------------------------------------------------------------------------------------------------ source
  def precompute(self, ref_torso_img: Array, bg_img: Array, segmap: Array) -> dict[str, Any]:
    """Everything that depends only on the source, once per source image.

    Args:
      ref_torso_img, bg_img: [B,512,512,3] in [-1,1]; segmap: [B,512,512,6] one-hot.
    Returns:
      dict(ref_torso_rgb_256 [B,256,256,3], ref_bg_rgb_256 [B,256,256,3], x_bg [B,256,256,256],
           torso: the torso model's source cache (absent when built with_torso=False)).
    """
    _check("ref_torso_img", ref_torso_img, (None, None, None, 3))
    _check("bg_img", bg_img, (None, None, None, 3))
    _check("segmap", segmap, (None, None, None, 6))
    ref_torso_rgb_256 = self._resize(ref_torso_img.astype(jnp.float32), MID_RESOLUTION)
    ref_bg_rgb_256 = self._resize(bg_img.astype(jnp.float32), MID_RESOLUTION)
    x_bg = _sequential(self.bg_encoder, ref_bg_rgb_256.astype(self.dtype))
    out = dict(ref_torso_rgb_256=ref_torso_rgb_256, ref_bg_rgb_256=ref_bg_rgb_256, x_bg=x_bg)
    if self.torso_model is not None:
      out["torso"] = self.torso_model.precompute(ref_torso_rgb_256, segmap)
    return out

  # ------------------------------------------------------------------------------------------------ per frame
  def head(self, rgb: Array, x: Array, weights: Array, ws: Array) -> dict[str, Array]:
    """Inputs at 256² and block0: rgb_256, weights_256 (AA-resized), x_head [B,256,256,256], rgb_head [B,256,256,3]."""
    if x.shape[1:3] != (INPUT_RESOLUTION, INPUT_RESOLUTION):
      # Official: x and rgb are resized to the input resolution first (not the case in the released model).
      x = self._resize(x, INPUT_RESOLUTION)
      rgb = self._resize(rgb, INPUT_RESOLUTION)
    rgb = rgb.astype(jnp.float32)
    rgb_256 = self._resize(rgb, MID_RESOLUTION)
    weights_256 = self._resize(weights.astype(jnp.float32), MID_RESOLUTION)
    x_head, rgb_head = self.block0(x.astype(self.dtype), rgb, ws)
    return dict(rgb_256=rgb_256, weights_256=weights_256, x_head=x_head, rgb_head=rgb_head)

  def fuse(self, x_head: Array, rgb_head: Array, weights_256: Array, rgb_torso: Array, deformed_torso_hid: Array,
           occlusion_2: Array, cache: dict[str, Any], ws: Array, *,
           head_threshold: float | Array = 0.9) -> dict[str, Array]:
    """Head/torso/background fusion and block1 (fusion mode v2), from the head branch and the torso outputs.

    Returns dict(rgb [B,512,512,3] unclamped, x [B,512,512,128], rgb_head_torso [B,256,256,3] (the
    head_torso_block's rgb input), rgb_person [B,256,256,3] (block1's rgb input), person [B,256,256,1]).
    """
    alpha = weights_256.astype(jnp.float32)
    rgb_ht, x = self._blend_head_torso(rgb_head, x_head, rgb_torso, deformed_torso_hid, alpha)
    x = _sequential(list(self.fuse_head_torso_convs)[1:], x)
    x, rgb = self.head_torso_block(x, rgb_ht, ws)
    person = person_alpha(alpha, self._resize(occlusion_2.astype(jnp.float32), MID_RESOLUTION), head_threshold)
    rgb_person, x = alpha_blend(rgb, x, cache["ref_bg_rgb_256"], cache["x_bg"], person)
    x = _sequential(self.fuse_fg_bg_convs, x)
    x, rgb = self.block1(x, rgb_person, ws)
    return dict(rgb=rgb, x=x, rgb_head_torso=rgb_ht, rgb_person=rgb_person, person=person)

  def _blend_head_torso(self, rgb_head: Array, x_head: Array, rgb_torso: Array, hid: Array,
                        alpha: Array) -> tuple[Array, Array]:
    """alpha_blend(rgb_head, x_head, rgb_torso, torso_encoder(hid), α) followed by fuse_head_torso_convs[0],
    with the 1×1 torso_encoder folded into the 3×3 conv (a speed-up, same maths up to float rounding).

    The torso half of the 3×3 conv W_t sees (1−α)·(A·hid + b) = A·((1−α)·hid) + (1−α)·b, so it equals a 3×3
    conv of [(1−α)·hid, (1−α)] (65 channels) with [W_t∘A, W_t·b] instead of a 256-channel input: 321 input
    channels in all instead of 512 (the largest conv of the per-frame forward, 77 → 48 GMAC at 256²).
    """
    enc, conv = self.torso_encoder[0], self.fuse_head_torso_convs[0]
    dt = self.dtype
    a = alpha.astype(jnp.float32)
    rgb = rgb_head.astype(jnp.float32) * a + rgb_torso.astype(jnp.float32) * (1 - a)
    ad = a.astype(dt)
    hi = jax.lax.Precision.HIGHEST
    w = conv.weight[...].astype(jnp.float32)                            # [3,3,512,256]
    c_head = x_head.shape[-1]
    w_t = w[:, :, c_head:]                                              # [3,3,256,256] (torso half)
    w_hid = jnp.einsum("ic,hwco->hwio", enc.weight[...].astype(jnp.float32)[0, 0], w_t, precision=hi)
    w_b = jnp.einsum("c,hwco->hwo", enc.bias[...].astype(jnp.float32), w_t, precision=hi)[:, :, None]
    k = jnp.concatenate([w[:, :, :c_head], w_hid, w_b], axis=2).astype(dt)
    x = jnp.concatenate([x_head.astype(dt) * ad, hid.astype(dt) * (1 - ad), (1 - ad)], axis=-1)
    y = jax.lax.conv_general_dilated(x, k, conv.stride, conv.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=conv.precision or default_precision(dt))
    return rgb, y + conv.bias[...].astype(dt)

  def __call__(self, rgb: Array, x: Array, weights: Array, cache: dict[str, Any], kp_s: Array, kp_d: Array, *,
               head_threshold: float | Array = 0.9, ws: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """One batch of frames.

    Args:
      rgb: [B,128,128,3] unclamped raw rgb (= x[..., :3]); x: [B,128,128,32] neural feature image;
      weights: [B,128,128,1] accumulated opacity; cache: `precompute(...)`; kp_s, kp_d: [B,68,3] landmarks;
      head_threshold: the official htbsr_head_threshold; ws: [B,3,512] (default ones, the official value).
    Returns:
      (image [B,512,512,3] clamped to [-1,1], aux) with aux = the torso model's occlusion [B,64,64,1],
      occlusion_2 [B,256,256,1], deformed_torso_hid [B,256,256,64], kp_src, kp_drv [B,4,3].
    """
    _check("rgb", rgb, (None, None, None, 3))
    _check("x", x, (None, rgb.shape[1], rgb.shape[2], None))
    _check("weights", weights, (None, rgb.shape[1], rgb.shape[2], 1))
    if self.torso_model is None:
      raise ValueError("SuperresolutionHybrid8XDC_Warp was built with_torso=False: use head() and fuse()")
    # The official ws are ones for every sample: one [1, 3, 512] row serves the whole batch (shared kernels).
    ws = self.default_ws(1) if ws is None else ws
    h = self.head(rgb, x, weights, ws)
    rgb_torso, aux = self.torso_model(cache["torso"], kp_s, kp_d, h["rgb_256"], h["weights_256"])
    r = self.fuse(h["x_head"], h["rgb_head"], h["weights_256"], rgb_torso, aux["deformed_torso_hid"],
                  aux["occlusion_2"], cache, ws, head_threshold=head_threshold)
    image = jnp.clip(r["rgb"], -1.0, 1.0)
    return image, dict(aux)


class SuperresolutionHybrid8XDC(nnx.Module):  # noqa: N801 (official class name)
  """The head-only EG3D SR of stages 1–2 (`sr_type: vanilla`; TRAINING §1.0, MODEL.md §1): block0 (r → 2r) and
  block1 (2r → 4r), both StyleGAN2 'skip' blocks configured as the HTB-SR's block0/block1, with the official
  all-ones ws. The defaults are the released sizes (32 → 256 → 128 channels, 128 → 256 → 512); smaller
  `channels`/`input_resolution`/`w_dim` give the CPU stand-ins of the `tiny` configs.

  Children mirror the torch keys below `superresolution.`: `block0.*`, `block1.*` and the top-level
  `resample_filter` buffer (registered, unused in the forward).
  """

  def __init__(self, in_channels: int = 32, channels: tuple[int, int] = (256, 128), *,
               input_resolution: int = INPUT_RESOLUTION, w_dim: int = W_DIM, sr_antialias: bool = True,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.input_resolution, self.w_dim, self.sr_antialias = input_resolution, w_dim, sr_antialias
    kw = dict(w_dim=w_dim, img_channels=3, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.block0 = SynthesisBlock(in_channels, channels[0], resolution=2 * input_resolution, **kw)
    self.block1 = SynthesisBlock(channels[0], channels[1], resolution=4 * input_resolution, **kw)
    self.resample_filter = Buffer(jnp.asarray(setup_filter()), torch_layout="none")

  @property
  def output_resolution(self) -> int:
    return 4 * self.input_resolution

  def __call__(self, rgb: Array, x: Array, *, ws: Array | None = None) -> Array:
    """rgb [B,r,r,3] (unclamped raw rgb), x [B,r,r,C] (the feature image) -> SR image [B,4r,4r,3], unclamped
    (the caller clamps, as the official generator does). ws: [1 or B,3,w_dim], default ones (one row serves
    the whole batch: shared kernels)."""
    _check("rgb", rgb, (None, None, None, 3))
    if x.shape[1:3] != (self.input_resolution, self.input_resolution):
      x = resize_bilinear(x, (self.input_resolution,) * 2, antialias=self.sr_antialias)
      rgb = resize_bilinear(rgb, (self.input_resolution,) * 2, antialias=self.sr_antialias)
    ws = jnp.ones((1, NUM_WS, self.w_dim), jnp.float32) if ws is None else ws
    x, img = self.block0(x, rgb.astype(jnp.float32), ws)
    _, img = self.block1(x, img, ws)
    return img


def from_state_dict(sd, *, prefix: str = "superresolution.", with_torso: bool = True, dtype=jnp.float32,
                    param_dtype=jnp.float32) -> SuperresolutionHybrid8XDC_Warp:
  """Build the SR without a random init (abstract construction, then every variable filled from `sd`).

  sd: {torch key: np.ndarray} (official names/layouts; spectral norm is folded here). With with_torso=False the
  `torso_model.*` keys are skipped.
  """
  from r3p.convert.torch_to_nnx import fold_spectral_norm, load_state_dict

  model = nnx.eval_shape(lambda: SuperresolutionHybrid8XDC_Warp(
      with_torso=with_torso, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
  for _, var in nnx.to_flat_state(nnx.state(model)):
    v = var.get_value()
    if isinstance(v, jax.ShapeDtypeStruct):
      var.set_value(jnp.zeros(v.shape, v.dtype))
  folded = fold_spectral_norm({k: v for k, v in sd.items() if k.startswith(prefix)})
  unused = list(UNUSED_KEYS)
  if with_torso:
    from r3p.models import torso_warp
    unused += ["torso_model." + k for k in getattr(torso_warp, "UNUSED_KEYS", ())]
  else:
    unused += [k[len(prefix):] for k in folded if k.startswith(prefix + "torso_model.")]
  load_state_dict(model, folded, prefix=prefix, unused=unused)
  return model
