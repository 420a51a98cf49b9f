"""Where the metric networks' weights come from: user-supplied public files, converted once to `<DIR>/<name>.npz`
(torch keys and layouts, numpy) by `python -m eval.convert_weights`, never downloaded."""
from __future__ import annotations

import os

import numpy as np

# name -> (file in the weights dir, the public file(s) it is converted from, builder module)
REGISTRY = {
    "lpips_alex": ("lpips_alex.npz", "torchvision alexnet weights (alexnet-owt-*.pth) + lpips weights/v0.1/alex.pth"),
    "lpips_vgg": ("lpips_vgg.npz", "torchvision vgg16 weights (vgg16-*.pth) + lpips weights/v0.1/vgg.pth"),
    "fid_inception": ("fid_inception.npz", "pytorch-fid pt_inception-2015-12-05-6726825d.pth"),
    "arcface": ("arcface.npz", "insightface arcface_torch backbone.pth (r50 or r100)"),
    "syncnet_v2": ("syncnet_v2.npz", "syncnet_python data/syncnet_v2.model"),
}


class WeightsUnavailable(RuntimeError):
  """A metric network's converted weights are missing (the message names the public file it needs)."""


def weights_path(name: str, weights_dir: str | None) -> str:
  fname, need = REGISTRY[name]
  if not weights_dir:
    raise WeightsUnavailable(f"needs {need}, converted with `python -m eval.convert_weights ... --out DIR`, "
                             f"then --weights_dir DIR (no --weights_dir given)")
  p = os.path.join(weights_dir, fname)
  if not os.path.isfile(p):
    raise WeightsUnavailable(f"needs {p} (from {need}; convert with `python -m eval.convert_weights`)")
  return p


def load_npz_state_dict(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def build_model(name: str, weights_dir: str | None, random_weights: bool = False, seed: int = 0):
  """The NNX model `name` with converted weights, or seeded random ones with `random_weights`."""
  sd = None if random_weights else load_npz_state_dict(weights_path(name, weights_dir))
  if name.startswith("lpips_"):
    from eval import lpips
    return lpips.build(name.split("_", 1)[1], sd, seed=seed)
  if name == "fid_inception":
    from eval import inception
    return inception.build(sd, seed=seed)
  if name == "arcface":
    from eval import arcface
    return arcface.build(sd, arch="r50", seed=seed)
  if name == "syncnet_v2":
    from eval import syncnet_v2
    return syncnet_v2.build(sd, seed=seed)
  raise KeyError(name)
