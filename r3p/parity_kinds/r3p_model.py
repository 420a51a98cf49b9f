"""Parity of the whole inference network against an `r3p_model` fixture case.

Rebuilds the case's name-seeded official state dict, loads it strictly, runs the full forward (I2P + per-frame
path) on the recorded inputs with the two recorded random draws, and compares every array of `outputs.npz`.
Tolerances: the case's own `fixture.json["tolerances"]` if present, else the bounds of the fixture format's
README (fp32 noise floor ×3–7; see r3p_model/README.md "Noise floor and tolerances").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.convert.seeded import load_seeded_state_dict
from r3p.fixture_io import FixtureCase
from r3p.parity_kinds import CaseResult, compare_all

# max |Δ| bounds per output of the official forward (absolute).
DEFAULT_TOLERANCES = {
    "image": 1e-4, "image_raw": 2e-4, "image_depth": 1e-4, "weights_img": 1e-4, "image_feature": 2e-4,
    "plane": 1e-3, "occlusion": 1e-5, "occlusion_2": 1e-5, "kp_src": 1e-5, "kp_drv": 1e-5,
}


def draws_from_rng(rng) -> dict[str, jax.Array]:
  """The recorded draws in the renderer's argument layout: coarse [B,R,S], importance [B·R, S]."""
  cj = np.asarray(rng["coarse_jitter"], np.float32)
  if cj.ndim == 4:
    cj = cj[..., 0]
  return {"coarse_jitter": jnp.asarray(cj), "importance_u": jnp.asarray(np.asarray(rng["importance_u"], np.float32))}


def jitted_forward(model):
  """jax.jit over (state, inputs, draws) with the graph split once."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def fwd(state, img, camera, cond, draws):
    m = nnx.merge(graphdef, state)
    return m(img, camera, cond, **draws)

  return lambda img, camera, cond, draws: fwd(state, img, camera, cond, draws)


def run(case_dir: str) -> CaseResult:
  from r3p.models import portrait

  case = FixtureCase(case_dir)
  sd = load_seeded_state_dict(case_dir, verify=True)
  model = portrait.build(sd)
  img, camera, cond = portrait.inputs_from_official(case.inputs)
  out = jitted_forward(model)(img, camera, cond, draws_from_rng(case.rng))
  pred = portrait.to_official(out)
  ref = {k: case.outputs[k] for k in case.outputs.files}
  tols = dict(DEFAULT_TOLERANCES)
  tols.update(case.meta.get("tolerances", {}))
  res = compare_all(pred, ref, {k: {"atol": float(v)} for k, v in tols.items()})
  notes = [f"outputs not in this case: {sorted(set(DEFAULT_TOLERANCES) - set(ref))}"] if set(DEFAULT_TOLERANCES) - set(ref) else []
  return CaseResult(kind=case.meta["kind"], case=case.name, outputs=res, notes=notes)
