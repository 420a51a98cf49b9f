"""EG3D `DualDiscriminator` (resnet architecture, camera-projection conditioning) in NNX (TRAINING §2.1.4).

Children mirror the official state_dict names: `b{res}` DiscriminatorBlocks (`fromrgb` in the first block,
`conv0`, `conv1` (↓2), `skip` (↓2, no bias)), `b4` DiscriminatorEpilogue (`conv`, `fc`, `out`; minibatch-std has
no params), `mapping` MappingNetwork (`embed`, `fc0..fc{n-1}`; lr multiplier 0.01). Input: 6 channels = the SR
image ⊕ the raw image resized to the same resolution, NHWC in [-1, 1]; camera c [B,25] (+ `c_noise`·std noise).
Weights are stored raw with runtime equalised-LR gains, as StyleGAN2. The fp16 top resolutions and
`conv_clamp` of the release are kept as the clamp only (fp32 compute).

Sizes (`SIZES`, `DualDiscriminator.of_size`): `full` = the released D (channel_base 32768, channel_max 512,
8 mapping layers); `tiny` = a CPU-sized D with the same structure (channel_base 256, channel_max 32, 2 mapping
layers: 8/16/32/32 channels at 32/16/8/4) for the `tiny` training configs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r3p.nn.layers import default_precision, param
from r3p.nn.stylegan2 import Buffer, FullyConnectedLayer, setup_filter, upfirdn2d

Array = jax.Array
LRELU_GAIN = float(np.sqrt(2.0))

# Released per-dimension camera std used for the c-noise when the batch has one sample (its std is undefined)
# [as released: the path taken in training at batch 1 per GPU]. Order = the 25-D camera (16 c2w, 9 K).
C_STD_B1 = np.asarray([0.0664, 0.0295, 0.2720, 0.6971, 0.0279, 0.0178, 0.1280, 0.3284, 0.2721, 0.1274, 0.0679,
                       0.1642, 0.0, 0.0, 0.0, 0.0, 0.0079, 0.0, 0.0, 0.0, 0.0079, 0.0, 0.0, 0.0, 0.0], np.float32)

SIZES = {
    "full": dict(channel_base=32768, channel_max=512, mapping_layers=8),
    "tiny": dict(channel_base=256, channel_max=32, mapping_layers=2),
}


def camera_noise_std(c: Array) -> Array:
  """Per-dimension std of the cameras over the batch (unbiased, as torch `std(0)`); the released table at B=1."""
  if c.shape[0] == 1:
    return jnp.asarray(C_STD_B1[: c.shape[1]], c.dtype)
  return jnp.std(c, axis=0, ddof=1)


def clamp_unit(x: Array) -> Array:
  """clip to [-1, 1] with torch.clamp's gradient (1 on the closed interval, so GT pixels at exactly ±1 keep
  their R1 gradient; `jnp.clip`'s is 0 at the bounds)."""
  return jnp.where((x >= -1) & (x <= 1), x, jnp.clip(x, -1.0, 1.0))


class Conv2dLayer(nnx.Module):
  """StyleGAN2 Conv2dLayer (up=1): weight [k,k,in,out] (torch [out,in,k,k]), optional ↓2 with the [1,3,3,1] FIR."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True,
               activation: str = "linear", down: int = 1, conv_clamp: float | None = None, rngs: nnx.Rngs):
    self.activation, self.down, self.conv_clamp = activation, down, conv_clamp
    self.padding = kernel_size // 2
    self.weight_gain = float(1 / np.sqrt(in_channels * kernel_size ** 2))
    w = jax.random.normal(rngs.params(), (kernel_size, kernel_size, in_channels, out_channels), jnp.float32)
    self.weight = param(w, "conv", (None, None, "embed", "mlp"))
    self.bias = param(jnp.zeros((out_channels,), jnp.float32), "none", ("mlp",)) if bias else None
    self.resample_filter = Buffer(jnp.asarray(setup_filter()), torch_layout="none")

  def __call__(self, x: Array, gain: float = 1.0) -> Array:
    w = self.weight[...] * self.weight_gain
    if self.down > 1:
      fw = self.resample_filter.shape[-1]
      p0 = self.padding + (fw - self.down + 1) // 2
      p1 = self.padding + (fw - self.down) // 2
      x = upfirdn2d(x, self.resample_filter[...], padding=(p0, p1, p0, p1))
      pad, stride = ((0, 0), (0, 0)), (self.down, self.down)
    else:
      pad, stride = ((self.padding, self.padding),) * 2, (1, 1)
    x = jax.lax.conv_general_dilated(x, w, stride, pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=default_precision(jnp.float32))
    if self.bias is not None:
      x = x + self.bias[...]
    if self.activation == "lrelu":
      x = jax.nn.leaky_relu(x, 0.2) * (LRELU_GAIN * gain)
    elif gain != 1:
      x = x * gain
    if self.conv_clamp is not None:
      c = self.conv_clamp * gain
      x = jnp.clip(x, -c, c)
    return x


class DiscriminatorBlock(nnx.Module):
  def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, *, img_channels: int,
               first: bool, conv_clamp: float | None, rngs: nnx.Rngs):
    kw = dict(conv_clamp=conv_clamp, rngs=rngs)
    if first:
      self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", **kw)
    self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", **kw)
    self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, **kw)
    self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, rngs=rngs)

  def __call__(self, x: Array | None, img: Array) -> Array:
    if hasattr(self, "fromrgb"):
      x = self.fromrgb(img)
    y = self.skip(x, gain=float(np.sqrt(0.5)))
    x = self.conv0(x)
    x = self.conv1(x, gain=float(np.sqrt(0.5)))
    return x + y


class MappingNetwork(nnx.Module):
  """c (25) -> cmap: `embed` FC then `num_layers` lrelu FCs (lr multiplier 0.01); c is 2nd-moment normalised."""

  def __init__(self, c_dim: int, w_dim: int, num_layers: int = 8, lr_multiplier: float = 0.01, *, rngs: nnx.Rngs):
    self.num_layers = num_layers
    self.embed = FullyConnectedLayer(c_dim, w_dim, rngs=rngs)
    for i in range(num_layers):
      setattr(self, f"fc{i}", FullyConnectedLayer(w_dim, w_dim, lr_multiplier=lr_multiplier, rngs=rngs))

  def __call__(self, c: Array) -> Array:
    y = self.embed(c)
    x = y * jax.lax.rsqrt(jnp.mean(jnp.square(y), axis=1, keepdims=True) + 1e-8)
    for i in range(self.num_layers):
      x = jax.nn.leaky_relu(getattr(self, f"fc{i}")(x), 0.2) * LRELU_GAIN
    return x


class DiscriminatorEpilogue(nnx.Module):
  def __init__(self, in_channels: int, cmap_dim: int, *, mbstd_group_size: int = 2, mbstd_num_channels: int = 1,
               conv_clamp: float | None, rngs: nnx.Rngs):
    self.mbstd_group_size, self.mbstd_num_channels = mbstd_group_size, mbstd_num_channels
    self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                            conv_clamp=conv_clamp, rngs=rngs)
    self.fc = FullyConnectedLayer(in_channels * 16, in_channels, rngs=rngs)
    self.out = FullyConnectedLayer(in_channels, cmap_dim, rngs=rngs)
    self.cmap_dim = cmap_dim

  def mbstd(self, x: Array) -> Array:
    n, h, w, c = x.shape
    g = min(self.mbstd_group_size, n)
    f = self.mbstd_num_channels
    y = x.reshape(g, n // g, h, w, f, c // f)
    y = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)         # [n/g, h, w, f, c/f]
    y = jnp.mean(y, axis=(1, 2, 4))                   # [n/g, f]
    y = jnp.tile(y[:, None, None, :], (g, h, w, 1))   # torch repeat(G, 1, H, W) order
    return jnp.concatenate([x, y], axis=-1)

  def __call__(self, x: Array, cmap: Array) -> Array:
    x = self.conv(self.mbstd(x))
    # torch flattens NCHW: C-major order.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    x = jax.nn.leaky_relu(self.fc(x), 0.2) * LRELU_GAIN
    x = self.out(x)
    return jnp.sum(x * cmap, axis=1, keepdims=True) / np.sqrt(self.cmap_dim)


class DualDiscriminator(nnx.Module):
  """D(img [B,R,R,3], raw [B,r,r,3], c [B,25]) -> logits [B,1] (raw resized to R and concatenated, 6 ch)."""

  def __init__(self, img_resolution: int = 512, *, c_dim: int = 25, channel_base: int = 32768,
               channel_max: int = 512, cmap_dim: int | None = None, mapping_layers: int = 8,
               conv_clamp: float | None = 256.0, mbstd_group_size: int = 2, rngs: nnx.Rngs):
    log2 = int(np.log2(img_resolution))
    if 2 ** log2 != img_resolution or img_resolution < 8:
      raise ValueError(f"img_resolution must be a power of two ≥ 8, got {img_resolution}")
    self.img_resolution = img_resolution
    self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]
    ch = {r: min(channel_base // r, channel_max) for r in self.block_resolutions + [4]}
    cmap_dim = ch[4] if cmap_dim is None else cmap_dim
    for r in self.block_resolutions:
      first = r == img_resolution
      setattr(self, f"b{r}", DiscriminatorBlock(0 if first else ch[r], ch[r], ch[r // 2], img_channels=6,
                                                first=first, conv_clamp=conv_clamp, rngs=rngs))
    self.mapping = MappingNetwork(c_dim, cmap_dim, mapping_layers, rngs=rngs)
    self.b4 = DiscriminatorEpilogue(ch[4], cmap_dim, mbstd_group_size=mbstd_group_size, conv_clamp=conv_clamp,
                                    rngs=rngs)

  @classmethod
  def of_size(cls, size: str, img_resolution: int, *, rngs: nnx.Rngs, **kw) -> "DualDiscriminator":
    """A D of a named size (`SIZES`: 'full' = released, 'tiny' = CPU tests/smoke runs)."""
    if size not in SIZES:
      raise ValueError(f"unknown discriminator size {size!r}; known: {sorted(SIZES)}")
    return cls(img_resolution, **SIZES[size], **kw, rngs=rngs)

  def __call__(self, img: Array, raw: Array, c: Array, *, c_noise: float = 0.0, key: Array | None = None) -> Array:
    """c_noise: camera noise in units of the per-dimension batch std (`camera_noise_std`), drawn from `key`."""
    r = self.img_resolution
    if img.shape[1:3] != (r, r):
      raise ValueError(f"image must be [B,{r},{r},3], got {img.shape}")
    raw_up = raw if raw.shape[1:3] == (r, r) else jax.image.resize(raw, (raw.shape[0], r, r, raw.shape[-1]),
                                                                     "linear", antialias=True)
    x_img = clamp_unit(jnp.concatenate([img, raw_up], axis=-1))  # the release clamps the D input to [-1, 1]
    if c_noise > 0:
      if key is None:
        raise ValueError("c_noise > 0 needs a key")
      c = c + jax.random.normal(key, c.shape, c.dtype) * camera_noise_std(c) * c_noise
    x = None
    for res in self.block_resolutions:
      x = getattr(self, f"b{res}")(x, x_img)
    return self.b4(x, self.mapping(c))
