"""The Real3D-Portrait inference network (`OSAvatarSECC_Img2plane_Torso`, released config, torso v2) in NNX.

Children mirror the official state_dict prefixes: `cano_img2plane_backbone` (I2P), `secc_img2plane_backbone`
(SegFormer SECC branch), `decoder` (OSGDecoder), `superresolution` (HTB-SR with the torso warp model) and the two
training-only scalars `lambda_pertube_*`. The renderer is a pure function (`r3p.render.renderer.render`).

The forward is split by what changes per frame (MODEL.md §2.14):
  * `source(img, ref_torso_img, bg_img, segmap)` — once per source image: canonical planes (1.28 TFLOP), the
    background encoder and torso appearance features. The official `cache_backbone` / `use_cached_backbone`.
  * `frame(src, camera, cond_cano, cond_src, cond_tgt, kp_s, kp_d, ...)` — per frame: SECC branch, plane fusion,
    volume rendering (two random draws, injectable), super-resolution with head/torso/background fusion.
  * `__call__(img, camera, cond, ...)` = both, returning every key the official forward returns.

Layouts: NHWC images, planes [B, 3, H, W, C]; `r3p.models.portrait.to_official` converts the output dict to the
official NCHW layout.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.convert import torch_to_nnx as t2n
from r3p.models import planes as planes_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """Released secc2plane_torso config values that shape the forward (MODEL.md §0.2)."""
  neural_rendering_resolution: int = 128
  num_samples_coarse: int = 48
  num_samples_fine: int = 48
  box_warp: float = 1.0
  htbsr_head_threshold: float = 0.9  # CLI --head_torso_threshold
  phase1_plane_fusion_mode: str = "add"


class OSAvatarSECC_Img2plane_Torso(nnx.Module):  # noqa: N801 (official class name)

  def __init__(self, config: Config = Config(), *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    # Imported here so that `import r3p.models.portrait` stays light.
    from r3p.models.decoder import OSGDecoder
    from r3p.models.img2plane import Img2PlaneModel
    from r3p.models.motion_adapter import SegFormerSECC2PlaneBackbone
    from r3p.models.superres import SuperresolutionHybrid8XDC_Warp

    self.config = config
    self.dtype = dtype
    self.cano_img2plane_backbone = Img2PlaneModel(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.secc_img2plane_backbone = SegFormerSECC2PlaneBackbone(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.decoder = OSGDecoder(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.superresolution = SuperresolutionHybrid8XDC_Warp(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    # Auto-tuned loss weights of the SECC/blink regularisers (training only; kept so checkpoints round-trip).
    self.lambda_pertube_blink_secc = nnx.Param(jnp.zeros((1,), param_dtype), torch_layout="none")
    self.lambda_pertube_secc = nnx.Param(jnp.zeros((1,), param_dtype), torch_layout="none")

  # ------------------------------------------------------------------ per source image
  def source(self, img: Array, ref_torso_img: Array, bg_img: Array, segmap: Array) -> dict[str, Any]:
    """Source-only work: canonical planes [B,3,256,256,32] and the SR cache (bg features, torso appearance)."""
    cano = self.cano_img2plane_backbone(img)
    sr_cache = self.superresolution.precompute(ref_torso_img, bg_img, segmap)
    return {"cano_planes": cano, "sr": sr_cache}

  # ------------------------------------------------------------------ per frame
  def frame(self, src: Mapping[str, Any], camera: Array, cond_cano: Array, cond_src: Array, cond_tgt: Array,
            kp_s: Array, kp_d: Array, *, key: Array | None = None, coarse_jitter: Array | None = None,
            importance_u: Array | None = None, head_threshold: float | None = None,
            implementation: str | None = None) -> dict[str, Array]:
    """One batch of frames given the source cache. Returns the official output dict in r3p layouts (NHWC)."""
    from r3p.models.motion_adapter import fuse_planes
    from r3p.render.renderer import render

    cfg = self.config
    secc = jnp.concatenate([cond_cano, cond_src, cond_tgt], axis=-1)  # [B,512,512,9] (cano, src, tgt) order
    secc_planes = self.secc_img2plane_backbone(secc)
    planes = fuse_planes(src["cano_planes"], secc_planes, mode=cfg.phase1_plane_fusion_mode)
    r = render(planes, self.decoder, camera, key=key, coarse_jitter=coarse_jitter, importance_u=importance_u,
               resolution=cfg.neural_rendering_resolution, n_coarse=cfg.num_samples_coarse,
               n_fine=cfg.num_samples_fine, box_warp=cfg.box_warp, implementation=implementation, dtype=self.dtype)
    feat = r["feature_image"]  # [B,128,128,32]; channels 0..2 = unclamped rgb (the SR input)
    rgb = feat[..., :3]
    thr = cfg.htbsr_head_threshold if head_threshold is None else head_threshold
    image, aux = self.superresolution(rgb, feat, r["weights_image"], src["sr"], kp_s, kp_d, head_threshold=thr)
    out = {
        "image": image,
        "image_raw": jnp.clip(rgb, -1.0, 1.0),
        "image_depth": r["depth_image"],
        "weights_img": r["weights_image"],
        "image_feature": feat[..., 3:],
        "plane": planes,
    }
    for k in ("occlusion", "occlusion_2", "kp_src", "kp_drv", "deformed_torso_hid"):
      if k in aux:
        out[k] = aux[k]
    return out

  def __call__(self, img: Array, camera: Array, cond: Mapping[str, Array], *, src: Mapping[str, Any] | None = None,
               **frame_kwargs) -> dict[str, Array]:
    """Full forward. `src` given = the official `use_cached_backbone=True` (img is then ignored)."""
    if src is None:
      src = self.source(img, cond["ref_torso_img"], cond["bg_img"], cond["segmap"])
    return self.frame(src, camera, cond["cond_cano"], cond["cond_src"], cond["cond_tgt"], cond["kp_s"],
                      cond["kp_d"], **frame_kwargs)


# ---------------------------------------------------------------------- weights

def unused_keys() -> list[str]:
  """State-dict keys that are present in the official checkpoint but not used at inference (MODEL.md §5)."""
  from r3p.models import img2plane, motion_adapter, superres, torso_warp
  keys = []
  for prefix, mod in (("cano_img2plane_backbone.", img2plane), ("secc_img2plane_backbone.", motion_adapter),
                      ("superresolution.", superres), ("superresolution.torso_model.", torso_warp)):
    keys += [prefix + k for k in getattr(mod, "UNUSED_KEYS", ())]
  return keys


def load_official(model: OSAvatarSECC_Img2plane_Torso, sd: Mapping[str, np.ndarray]) -> dict[str, list[str]]:
  """Load an official `state_dict` (torch names/layouts, numpy) into `model`, strictly.

  Spectral-norm triples are folded to effective weights first (eval semantics, stored u/v). Every key must be
  either loaded or listed as unused; otherwise a `StateDictError` names it.
  Returns {"loaded": [...], "unused": [...]}.
  """
  sd = dict(sd)
  unused = [k for k in unused_keys()]
  folded = t2n.fold_spectral_norm(sd)
  loaded = t2n.load_state_dict(model, folded, unused=unused)
  # The folded triples count as loaded through their effective weight.
  return {"loaded": loaded, "unused": [k for k in unused if k in folded]}


def build(sd: Mapping[str, np.ndarray] | None = None, *, config: Config = Config(), dtype=jnp.float32,
          seed: int = 0) -> OSAvatarSECC_Img2plane_Torso:
  """Build the model; with `sd`, load the official weights (params stay fp32; `dtype` is the compute dtype)."""
  if sd is None:
    return OSAvatarSECC_Img2plane_Torso(config, dtype=dtype, rngs=nnx.Rngs(seed))
  # Loading: build abstractly (random init of 150 M params costs a minute on CPU), then fill every variable.
  model = nnx.eval_shape(lambda: OSAvatarSECC_Img2plane_Torso(config, dtype=dtype, rngs=nnx.Rngs(seed)))
  load_official(model, sd)
  left = t2n.abstract_leaves(model)
  if left:
    raise t2n.StateDictError(f"variable {left[0]} was not filled by the state dict ({len(left)} in all)")
  return model


# ---------------------------------------------------------------------- layouts

_NHWC_KEYS = ("image", "image_raw", "image_depth", "weights_img", "image_feature", "occlusion", "occlusion_2",
              "deformed_torso_hid")


def to_official(out: Mapping[str, Array]) -> dict[str, np.ndarray]:
  """r3p output dict -> the official layouts (NCHW images, planes [B,3,C,H,W]) as float32 numpy."""
  res = {}
  for k, v in out.items():
    v = np.asarray(jax.device_get(v), np.float32)
    if k in _NHWC_KEYS:
      v = np.moveaxis(v, -1, 1)
    elif k == "plane":
      v = np.asarray(planes_lib.planes_to_torch(v))
    res[k] = v
  return res


def inputs_from_official(inputs: Mapping[str, np.ndarray]) -> tuple[Array, Array, dict[str, Array]]:
  """The fixture / official input dict (NCHW) -> (img, camera, cond) in r3p layouts."""
  def nhwc(a):
    return jnp.asarray(np.moveaxis(np.asarray(a, np.float32), 1, -1))
  cond = {k: nhwc(inputs[k]) for k in ("cond_cano", "cond_src", "cond_tgt", "ref_torso_img", "bg_img", "segmap")}
  cond["kp_s"] = jnp.asarray(inputs["kp_s"], jnp.float32)
  cond["kp_d"] = jnp.asarray(inputs["kp_d"], jnp.float32)
  return nhwc(inputs["img"]), jnp.asarray(inputs["camera"], jnp.float32), cond
