"""The `vgg19_v2` perceptual loss of stages 1–3 (TRAINING §2.1.1): VGG19 (ImageNet) + VGGFace (VGG16, 2622 ids).

Two frozen feature nets with torchvision `features.N` names (the VGGFace `vgg_face_dag` names `conv1_1 … conv5_3`
are mapped onto VGG16 `features.N` indices by `vggface_state_dict`, as the official loader does). Taps relu1_1 …
relu5_1 with weights 1/32, 1/16, 1/8, 1/4, 1; per tap an L1 mean against the detached target features (the
VGGFace term ÷255), then 3 half scales of the VGG19 branch that only use relu5_1 (weight 1) [as released: a loop
variable leaks]. NaN terms count 0. Inputs are resized to `size` (512 officially) first; stages 2–3 pass
[-1, 1] images straight in [as released].

The weights are `FrozenWeight` variables, not `nnx.Param`: the train state keeps them with the non-trained part
(next to BatchNorm statistics), so the optimiser never sees them and checkpoints carry them. Build the nets with
`width_div > 1` for CPU tests (random weights; the channel counts are then not the released ones).
The conv/ReLU/max-pool stacks are built with the metric nets' helpers (`eval.lpips.build_features`).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from eval._nets import load_weights
from eval.lpips import _VGG as VGG16_SPEC
from eval.lpips import build_features
from r3p.nn.layers import Conv2d, interpolate_bilinear

Array = jax.Array

LAYER_WEIGHTS = {"relu_1_1": 1 / 32, "relu_2_1": 1 / 16, "relu_3_1": 1 / 8, "relu_4_1": 1 / 4, "relu_5_1": 1.0}
VGG19_TAPS = {"relu_1_1": 1, "relu_2_1": 6, "relu_3_1": 11, "relu_4_1": 20, "relu_5_1": 29}
VGGFACE_TAPS = {"relu_1_1": 1, "relu_2_1": 6, "relu_3_1": 11, "relu_4_1": 18, "relu_5_1": 25}
# pytorch-mcn `vgg_face_dag` conv names -> VGG16 `features` index (the official loader's mapping).
VGGFACE_DAG = {0: "conv1_1", 2: "conv1_2", 5: "conv2_1", 7: "conv2_2", 10: "conv3_1", 12: "conv3_2",
               14: "conv3_3", 17: "conv4_1", 19: "conv4_2", 21: "conv4_3", 24: "conv5_1", 26: "conv5_2",
               28: "conv5_3"}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
VGGFACE_MEAN = np.array([129.186279296875, 104.76238250732422, 93.59396362304688], np.float32)  # on ×255 input


class FrozenWeight(nnx.Variable):
  """A pretrained weight that is never trained (kept out of the optimiser's `nnx.Param` partition)."""


def _vgg_spec(cfg, width_div: int):
  out, cin = [], 3
  for v in cfg:
    if v == "M":
      out.append(("m", 2, 2))
    else:
      out += [("c", cin, v // width_div, 3, 1, 1), ("r",)]
      cin = v // width_div
  return out


VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]


def _scale_spec(spec, width_div: int):
  out, cin = [], 3
  for s in spec:
    if s[0] == "c":
      out.append(("c", cin, s[2] // width_div) + tuple(s[3:]))
      cin = s[2] // width_div
    else:
      out.append(s)
  return out


class VGGFeatures(nnx.Module):
  """torchvision-style `features` stack (only up to the last tap) returning {tap name: NHWC feature}."""

  def __init__(self, spec, taps: Mapping[str, int], *, rngs: nnx.Rngs):
    self.taps = dict(taps)
    self.features = nnx.List(build_features(spec[:max(taps.values()) + 1], rngs))

  def __call__(self, x: Array) -> dict[str, Array]:
    by_index = {i: n for n, i in self.taps.items()}
    out = {}
    for i, layer in enumerate(self.features):
      x = layer(x)
      if i in by_index:
        out[by_index[i]] = x
    return out


def freeze(module: nnx.Module) -> nnx.Module:
  """Turn every conv weight/bias `nnx.Param` of `module` into a `FrozenWeight` (same value and metadata)."""
  for _, m in nnx.iter_modules(module):
    if isinstance(m, Conv2d):
      for name in ("weight", "bias"):
        v = getattr(m, name)
        if isinstance(v, nnx.Param):
          setattr(m, name, FrozenWeight(v.get_value(), **v.get_metadata()))
  return module


class PerceptualNets(nnx.Module):
  """`vgg19` (ImageNet VGG19 features) and `vggface` (VGG16-2622 features), frozen. Without state dicts the
  weights are the layers' random init (tests / shape analysis only: say so wherever such a loss is reported)."""

  def __init__(self, *, width_div: int = 1, vgg19_sd: Mapping[str, np.ndarray] | None = None,
               vggface_sd: Mapping[str, np.ndarray] | None = None, rngs: nnx.Rngs):
    self.vgg19 = VGGFeatures(_vgg_spec(VGG19_CFG, width_div), VGG19_TAPS, rngs=rngs)
    self.vggface = VGGFeatures(_scale_spec(VGG16_SPEC, width_div), VGGFACE_TAPS, rngs=rngs)
    for net, sd, what in ((self.vgg19, vgg19_sd, "VGG19"), (self.vggface, vggface_sd, "VGGFace")):
      if sd is not None:  # else: the layers' own random init (traceable: the train state is built under jit)
        load_weights(net, _used_part(sd, max(net.taps.values())), what=what)
    freeze(self)


def _used_part(sd: Mapping[str, np.ndarray], last: int) -> dict[str, np.ndarray]:
  """The `features.N.*` entries up to the last tapped layer (the classifier and deeper convs are unused)."""
  out = {}
  for k, v in sd.items():
    parts = k.split(".")
    if parts[0] == "features" and parts[1].isdigit() and int(parts[1]) <= last:
      out[k] = v
  return out


def vgg19_state_dict(torchvision_sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """torchvision `vgg19` state dict (vgg19-dcbb9e9d.pth as numpy) -> the `features.N` part (torch layouts)."""
  return {k: np.asarray(v) for k, v in torchvision_sd.items() if k.startswith("features.")}


def vggface_state_dict(dag_sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Oxford `vgg_face_dag.pth` (numpy; keys conv1_1.weight …) -> VGG16 `features.N.*` keys (torch layouts)."""
  missing = [f"{n}.{p}" for n in VGGFACE_DAG.values() for p in ("weight", "bias") if f"{n}.{p}" not in dag_sd]
  if missing:
    raise ValueError(f"VGGFace state dict lacks {missing[:4]}{'…' if len(missing) > 4 else ''}")
  return {f"features.{i}.{p}": np.asarray(dag_sd[f"{n}.{p}"]) for i, n in VGGFACE_DAG.items()
          for p in ("weight", "bias")}


def _l1(a: Array, b: Array) -> Array:
  t = jnp.mean(jnp.abs(a - jax.lax.stop_gradient(b)))
  return jnp.where(jnp.isnan(t), 0.0, t)  # NaN terms count 0 (official)


def _resize(x: Array, size: int) -> Array:
  if x.shape[1:3] == (size, size):
    return x
  # torch bilinear, align_corners=False, antialias=True: jax.image.resize 'linear' with antialias matches it.
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "linear", antialias=True)


def perceptual_loss(nets: PerceptualNets, pred: Array, target: Array, *, size: int = 512, n_scale: int = 3) -> Array:
  """Scalar loss between NHWC images `pred` and `target` (the target is detached)."""
  if pred.shape != target.shape:
    raise ValueError(f"pred {pred.shape} and target {target.shape} differ")
  b = pred.shape[0]
  x = _resize(jnp.concatenate([pred, target]), size)  # one pass over pred ⊕ target
  ff = nets.vggface(x * 255.0 - VGGFACE_MEAN)
  x = (x - IMAGENET_MEAN) / IMAGENET_STD
  f19 = nets.vgg19(x)
  loss = 0.0
  for layer, w in LAYER_WEIGHTS.items():
    loss = loss + w * _l1(ff[layer][:b], ff[layer][b:]) / 255.0
    loss = loss + w * _l1(f19[layer][:b], f19[layer][b:])
  last = list(LAYER_WEIGHTS)[-1]
  for _ in range(n_scale):
    h, w_ = x.shape[1] // 2, x.shape[2] // 2
    x = interpolate_bilinear(x, (h, w_), align_corners=False)
    f = nets.vgg19(x)[last]
    loss = loss + LAYER_WEIGHTS[last] * _l1(f[:b], f[b:])
  return loss
