"""Dilated ResNet-34 encoder and DeepLabV3 head as used by the canonical image-to-plane backbone, NHWC.

Names mirror the official torch modules (torchvision `ResNet` as patched by the segmentation-models encoder, and
the DeepLabV3 decoder of `img2plane/deeplabv3/decoders/my_decoder.py`), so NNX paths are the torch state_dict keys:
`conv1`, `bn1`, `layer{1..4}.<i>.{conv1,bn1,conv2,bn2,downsample.{0,1}}`, `decoder.0.convs.{0.0,1.0,2.0,3.0,4.1}`,
`decoder.0.project.0`, `decoder.1`.

Dilation (MODEL.md §1.1, §6.6): for output stride 8, *every* conv of layer3 gets stride 1 / dilation 2 and every
conv of layer4 stride 1 / dilation 4, padding (k//2)·dilation, the 1x1 downsample convs included (padding 0).
This is not torchvision's `replace_stride_with_dilation` (where a layer's first block keeps the previous dilation).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from r3p.nn.layers import BatchNorm, Conv2d, LeakyReLU, ReLU  # noqa: F401 (re-exported: Sequential slots)
from r3p.nn.numerics import tree_mean

Array = jax.Array


class GlobalAvgPool(nnx.Module):
  """torch.nn.AdaptiveAvgPool2d(1) on NHWC (keeps 1x1 spatial dims). Mean accumulated in fp32."""

  def __call__(self, x: Array) -> Array:
    return tree_mean(x.astype(jnp.float32), (1, 2), keepdims=True).astype(x.dtype)


def max_pool_3x3_s2(x: Array) -> Array:
  """torch.nn.MaxPool2d(3, stride=2, padding=1) on NHWC: padding never wins (-inf)."""
  # A Python-scalar init keeps reduce_window differentiable (an array init blocks linearisation in training).
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


def run_sequential(layers: Sequence[nnx.Module], x: Array) -> Array:
  for layer in layers:
    x = layer(x)
  return x


class BasicBlock(nnx.Module):
  """torchvision BasicBlock: conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, + identity/downsample, ReLU."""

  def __init__(self, inplanes: int, planes: int, *, stride: int = 1, dilation: int = 1, downsample: bool = False,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.conv1 = Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False,
                        rngs=rngs, **kw)
    self.bn1 = BatchNorm(planes, **kw)
    self.conv2 = Conv2d(planes, planes, 3, stride=1, padding=dilation, dilation=dilation, bias=False, rngs=rngs,
                        **kw)
    self.bn2 = BatchNorm(planes, **kw)
    if downsample:
      # torch: nn.Sequential(conv1x1(stride), BatchNorm2d) -> keys downsample.0.weight, downsample.1.*
      self.downsample = nnx.List([
          Conv2d(inplanes, planes, 1, stride=stride, padding=0, dilation=dilation, bias=False, rngs=rngs, **kw),
          BatchNorm(planes, **kw)])
    else:
      self.downsample = None

  def __call__(self, x: Array) -> Array:
    identity = x if self.downsample is None else run_sequential(self.downsample, x)
    h = jax.nn.relu(self.bn1(self.conv1(x)))
    h = self.bn2(self.conv2(h))
    return jax.nn.relu(h + identity)


class ResNetEncoder(nnx.Module):
  """ResNet (BasicBlock) feature encoder with the segmentation-models dilation patch; `fc`/`avgpool` removed.

  `__call__` returns the 6 feature maps of the official encoder: [input, relu(bn1(conv1)), layer1(maxpool),
  layer2, layer3, layer4] — for a 512² input with output_stride 8: 512², 256²×64, 128²×64, 64²×128, 64²×256,
  64²×512.
  """

  def __init__(self, in_channels: int = 5, layers: Sequence[int] = (3, 4, 6, 3), output_stride: int = 8, *,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if output_stride not in (8, 16, 32):
      raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.conv1 = Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False, rngs=rngs, **kw)
    self.bn1 = BatchNorm(64, **kw)
    # Per stage: (planes, stride before patch, dilation after patch). OS 8 dilates layer3 (2) and layer4 (4);
    # OS 16 dilates layer4 only (2); a dilated stage runs at stride 1.
    dil = {8: (1, 1, 2, 4), 16: (1, 1, 1, 2), 32: (1, 1, 1, 1)}[output_stride]
    planes = (64, 128, 256, 512)
    strides = (1, 2, 2, 2)
    inplanes = 64
    for li in range(4):
      d = dil[li]
      s = strides[li] if d == 1 else 1
      blocks = []
      for bi in range(layers[li]):
        first = bi == 0
        need_ds = first and (strides[li] != 1 or inplanes != planes[li])
        blocks.append(BasicBlock(inplanes if first else planes[li], planes[li], stride=s if first else 1,
                                 dilation=d, downsample=need_ds, rngs=rngs, **kw))
      inplanes = planes[li]
      setattr(self, f"layer{li + 1}", nnx.List(blocks))

  def __call__(self, x: Array) -> list[Array]:
    feats = [x]
    h = jax.nn.relu(self.bn1(self.conv1(x)))
    feats.append(h)
    h = max_pool_3x3_s2(h)
    for name in ("layer1", "layer2", "layer3", "layer4"):
      h = run_sequential(getattr(self, name), h)
      feats.append(h)
    return feats


class ASPP(nnx.Module):
  """Atrous spatial pyramid pooling of my_decoder.py: no BatchNorm anywhere, all convs bias-free.

  convs.0 = 1x1 + ReLU; convs.1..3 = 3x3 dilated (padding = rate) + ReLU; convs.4 = global avg pool -> 1x1 ->
  ReLU -> bilinear resize of the 1x1 map back to HxW (a constant broadcast); project = 1x1 over the 5 concatenated
  branches + ReLU (+ Dropout, identity at eval).
  """

  def __init__(self, in_channels: int, out_channels: int = 256, atrous_rates: Sequence[int] = (12, 24, 36), *,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    convs = [nnx.List([Conv2d(in_channels, out_channels, 1, bias=False, **kw), ReLU()])]
    for r in atrous_rates:
      convs.append(nnx.List([Conv2d(in_channels, out_channels, 3, padding=r, dilation=r, bias=False, **kw),
                             ReLU()]))
    convs.append(nnx.List([GlobalAvgPool(), Conv2d(in_channels, out_channels, 1, bias=False, **kw), ReLU()]))
    self.convs = nnx.List(convs)
    self.project = nnx.List([Conv2d(len(convs) * out_channels, out_channels, 1, bias=False, **kw), ReLU()])

  def __call__(self, x: Array) -> Array:
    outs = [run_sequential(branch, x) for branch in self.convs]
    # Bilinear upsampling of a 1x1 map (align_corners=False) is exactly a broadcast.
    outs[-1] = jnp.broadcast_to(outs[-1], outs[0].shape)
    return run_sequential(self.project, jnp.concatenate(outs, axis=-1))


class DeepLabV3(nnx.Module):
  """The custom DeepLabV3 of `deeplabv3/decoders/my_model.py`: ResNet encoder + `decoder` = [ASPP, conv3x3].

  The final 3x3 conv has no bias, no BN and no activation (MODEL.md §6.5). Output: [B, H/8, W/8, 256].
  """

  def __init__(self, in_channels: int = 5, decoder_channels: int = 256, layers: Sequence[int] = (3, 4, 6, 3), *,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.encoder = ResNetEncoder(in_channels, layers, output_stride=8, **kw)
    self.decoder = nnx.List([ASPP(512, decoder_channels, **kw),
                             Conv2d(decoder_channels, decoder_channels, 3, padding=1, bias=False, **kw)])

  def decode(self, features: Sequence[Array]) -> Array:
    """The decoder reads only the deepest feature map."""
    return run_sequential(self.decoder, features[-1])

  def __call__(self, x: Array) -> Array:
    if x.shape[1] % 8 or x.shape[2] % 8:
      raise ValueError(f"DeepLabV3 input H, W must be divisible by 8, got {x.shape[1:3]}")
    return self.decode(self.encoder(x))
