"""Convert the public metric-network weight files to r3p's format (`<out>/<name>.npz`, torch keys), torch-free.

    python -m eval.convert_weights [--alexnet alexnet-owt-7be5be79.pth --lpips_alex alex.pth]
        [--vgg16 vgg16-397923af.pth --lpips_vgg vgg.pth] [--inception pt_inception-2015-12-05-6726825d.pth]
        [--arcface backbone.pth] [--syncnet syncnet_v2.model] --out DIR

Every file is read with the restricted reader `r3p.convert.torch_ckpt` (zip and legacy formats), the keys the
network uses are checked by building it and loading them strictly, then saved. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from eval.weights import REGISTRY
from r3p.convert.torch_ckpt import CheckpointError, extract_state_dict, load_torch_checkpoint


def _read(path: str) -> dict[str, np.ndarray]:
  return extract_state_dict(load_torch_checkpoint(path, allow_unknown=True), where=path)


def _only(sd, prefix):
  return {k: v for k, v in sd.items() if k.startswith(prefix)}


def convert(name: str, files: list[str], out_dir: str) -> str:
  from eval.weights import build_model  # noqa: F401 (build check below)
  if name.startswith("lpips_"):
    backbone, lin = _read(files[0]), _read(files[1])
    sd = {**_only(backbone, "features."), **{k: v for k, v in lin.items() if k.startswith("lin")}}
    from eval import lpips
    model = lpips.LPIPS(name.split("_", 1)[1], rngs=__import__("flax").nnx.Rngs(0))
    from r3p.convert.torch_to_nnx import model_variables
    used = set(model_variables(model))
    sd = {k: v for k, v in sd.items() if k in used}
    lpips.build(name.split("_", 1)[1], sd)
  elif name == "fid_inception":
    sd = _read(files[0])
    from eval import inception
    inception.build(sd)
  elif name == "arcface":
    sd = _read(files[0])
    from eval import arcface
    arcface.build(sd)
  elif name == "syncnet_v2":
    sd = _read(files[0])
    from eval import syncnet_v2
    syncnet_v2.build(sd)
  else:
    raise KeyError(name)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, REGISTRY[name][0])
  tmp = path + ".tmp.npz"
  np.savez(tmp, **sd)
  os.replace(tmp, path)
  return path


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m eval.convert_weights", description=__doc__.split("\n\n")[0])
  ap.add_argument("--alexnet", help="torchvision alexnet state dict (.pth)")
  ap.add_argument("--lpips_alex", help="lpips weights/v0.1/alex.pth")
  ap.add_argument("--vgg16", help="torchvision vgg16 state dict (.pth)")
  ap.add_argument("--lpips_vgg", help="lpips weights/v0.1/vgg.pth")
  ap.add_argument("--inception", help="pytorch-fid pt_inception-2015-12-05-*.pth")
  ap.add_argument("--arcface", help="arcface_torch backbone.pth (r50 / r100)")
  ap.add_argument("--syncnet", help="syncnet_python syncnet_v2.model")
  ap.add_argument("--out", required=True, help="output folder (pass it to eval.metrics as --weights_dir)")
  a = ap.parse_args(argv)
  jobs = []
  for name, files in (("lpips_alex", [a.alexnet, a.lpips_alex]), ("lpips_vgg", [a.vgg16, a.lpips_vgg]),
                      ("fid_inception", [a.inception]), ("arcface", [a.arcface]), ("syncnet_v2", [a.syncnet])):
    given = [f for f in files if f]
    if not given:
      continue
    if len(given) != len(files):
      ap.error(f"{name} needs both files: {REGISTRY[name][1]}")
    jobs.append((name, files))
  if not jobs:
    ap.error("no weight file given (see --help)")
  for name, files in jobs:
    try:
      path = convert(name, files, a.out)
    except (CheckpointError, ValueError, KeyError) as e:
      print(f"eval.convert_weights: {name}: {str(e).splitlines()[0]}", file=sys.stderr)
      return 1
    print(f"{name}: {' + '.join(files)} -> {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
