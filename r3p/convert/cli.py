"""`python -m r3p.convert`: official Real3D-Portrait checkpoints -> an r3p checkpoint folder (Orbax).

    python -m r3p.convert --torso_ckpt checkpoints/240210_real3dportrait_orig/secc2plane_torso_orig \
        --a2m_ckpt checkpoints/240210_real3dportrait_orig/audio2secc_vae [--hubert checkpoints/hubert-large] --out r3p_ckpt

The output folder holds one Orbax checkpoint per network (`torso/`, `a2m/`, `hubert/`) of its NNX state (JAX
layouts, spectral norm folded) plus `r3p_checkpoint.json` (what is inside, the source files). `r3p infer
--ckpt_dir r3p_ckpt` (or `Portrait.from_checkpoints(r3p_ckpt)`) loads it without reading the torch pickles.
The folder is written under a temporary name and renamed at the end; a bad input prints one error line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import sys
import tempfile

MANIFEST = "r3p_checkpoint.json"


def _save(path: pathlib.Path, model) -> None:
  import orbax.checkpoint as ocp
  from flax import nnx

  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path.absolute(), nnx.to_pure_dict(nnx.state(model)))
  ckptr.wait_until_finished()


def _restore(path: pathlib.Path, abstract_model):
  """Fill `abstract_model` (from nnx.eval_shape) in place from an Orbax folder written by `_save`."""
  import orbax.checkpoint as ocp
  from flax import nnx

  state = nnx.state(abstract_model)
  target = nnx.to_pure_dict(state)
  restored = ocp.StandardCheckpointer().restore(path.absolute(), target)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(abstract_model, state)
  return abstract_model


def convert(torso_ckpt=None, a2m_ckpt=None, hubert=None, out=None, *, torso_sd=None) -> pathlib.Path:
  """Convert the given networks (any subset) into `out`. `torso_sd` replaces reading `torso_ckpt` (tests)."""
  from r3p.api import InferError, newest_ckpt
  from r3p.convert import torch_ckpt

  out = pathlib.Path(out)
  if out.exists() and not (out / MANIFEST).exists():
    raise InferError(f"--out {out}: exists and is not an r3p checkpoint folder (refusing to overwrite)")
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
  manifest = {"format": "r3p-orbax-1", "networks": {}}
  try:
    if torso_ckpt is not None or torso_sd is not None:
      from r3p.models import portrait
      if torso_sd is None:
        f = newest_ckpt(torso_ckpt, "--torso_ckpt")
        torso_sd = torch_ckpt.extract_state_dict(torch_ckpt.load_torch_checkpoint(f, allow_unknown=True),
                                                 where=str(f))
        src = str(f)
      else:
        src = "<state dict>"
      if not any(k.startswith("cano_img2plane_backbone.") for k in torso_sd):
        raise InferError(f"{src}: not a secc2plane_torso checkpoint (no cano_img2plane_backbone.* keys)")
      _save(tmp / "torso", portrait.build(torso_sd))
      manifest["networks"]["torso"] = {"source": src, "config": dataclasses.asdict(portrait.Config())}
    if a2m_ckpt is not None:
      from flax import nnx

      from r3p.audio import checkpoints as C
      from r3p.models import audio2motion as A
      f = newest_ckpt(a2m_ckpt, "--a2m_ckpt")
      sd = C.load_a2m_weights(str(f))
      if any(k.startswith("cano_img2plane_backbone.") for k in sd):
        raise InferError(f"{f}: this is the secc2plane_torso checkpoint, not the audio2secc_vae one")
      a2m = A.PitchContourVAEModel(rngs=nnx.Rngs(0))
      A.load_a2m_state_dict(a2m, sd)
      _save(tmp / "a2m", a2m)
      manifest["networks"]["a2m"] = {"source": str(f)}
    if hubert is not None:
      from r3p.audio import checkpoints as C
      from r3p.models import hubert as H
      sd, cfg = C.load_hubert_weights(str(hubert))
      config = H.HubertConfig.from_dict(cfg) if cfg else H.HubertConfig()
      _save(tmp / "hubert", H.hubert_from_state_dict(sd, config))
      manifest["networks"]["hubert"] = {"source": str(hubert), "config": dataclasses.asdict(config)}
    if not manifest["networks"]:
      raise InferError("nothing to convert: give --torso_ckpt, --a2m_ckpt and/or --hubert")
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if out.exists():
      shutil.rmtree(out)
    os.replace(tmp, out)
    return out
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)


def load_manifest(ckpt_dir) -> dict:
  p = pathlib.Path(ckpt_dir) / MANIFEST
  if not p.is_file():
    from r3p.api import InferError
    raise InferError(f"{ckpt_dir}: not an r3p checkpoint folder (no {MANIFEST}; convert with python -m r3p.convert)")
  return json.loads(p.read_text())


def load_torso(ckpt_dir, dtype=None):
  """The portrait network from a converted folder; `dtype` = its activation dtype (None: float32; params stay
  float32)."""
  import jax.numpy as jnp
  from flax import nnx

  from r3p.models import portrait
  man = load_manifest(ckpt_dir)
  cfg = portrait.Config(**man["networks"]["torso"].get("config", {}))
  dt = jnp.float32 if dtype is None else dtype
  model = nnx.eval_shape(lambda: portrait.OSAvatarSECC_Img2plane_Torso(cfg, dtype=dt, rngs=nnx.Rngs(0)))
  return _restore(pathlib.Path(ckpt_dir) / "torso", model)


def load_audio_driver(ckpt_dir):
  """`r3p.audio.drive.AudioToMotion` from a converted folder (needs both a2m and hubert)."""
  from flax import nnx

  from r3p.audio.drive import AudioToMotion
  from r3p.models import audio2motion as A
  from r3p.models import hubert as H
  man = load_manifest(ckpt_dir)
  d = pathlib.Path(ckpt_dir)
  hc = man["networks"]["hubert"]["config"]
  hc = H.HubertConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in hc.items()})
  hub = _restore(d / "hubert", nnx.eval_shape(lambda: H.HubertModel(hc, rngs=nnx.Rngs(0))))
  a2m = _restore(d / "a2m", nnx.eval_shape(lambda: A.PitchContourVAEModel(rngs=nnx.Rngs(0))))
  return AudioToMotion(H.HubertChunkRunner(hub), a2m)


def main(argv=None, prog: str = "python -m r3p.convert") -> int:
  ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
  ap.add_argument("--torso_ckpt", help="secc2plane_torso checkpoint (.ckpt or its folder)")
  ap.add_argument("--a2m_ckpt", help="audio2secc_vae checkpoint (.ckpt or its folder)")
  ap.add_argument("--hubert", help="HuBERT-large (transformers folder or weights file)")
  ap.add_argument("--out", required=True, help="output folder")
  args = ap.parse_args(argv)
  from r3p.api import error_line, user_errors
  try:
    out = convert(args.torso_ckpt, args.a2m_ckpt, args.hubert, args.out)
  except user_errors() as e:
    print(f"{prog}: error: {error_line(e)}", file=sys.stderr)
    return 2
  print(f"{prog}: wrote {out}", file=sys.stderr)
  return 0
