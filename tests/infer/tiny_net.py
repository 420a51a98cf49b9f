"""A small stand-in for the portrait network with the same `source` / `frame` interface and output shapes
(512² image, 128² raw/depth/weights, 256² occlusion), cheap enough for pipeline tests on a 2-core CPU. Every
input reaches the output, so a pipeline that drops or mixes one up changes the frames. Its depth varies from frame
to frame with the driving SECC (so a whole-clip depth range differs from one chunk's), and `depth(...)` is the
same depth without the rest (the volume-renderer-only pass of concat_debug)."""
import jax
import jax.numpy as jnp
from flax import nnx


class TinyPortraitNet(nnx.Module):

  def __init__(self, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.w_src = nnx.Param(jax.random.normal(rngs.params(), (12, 3)) * 0.3)
    self.w_secc = nnx.Param(jax.random.normal(rngs.params(), (9, 3)) * 0.3)
    self.w_cam = nnx.Param(jax.random.normal(rngs.params(), (25 + 68 * 6, 3)) * 0.05)

  def _mm(self, x, w):
    return x.astype(self.dtype) @ w[...].astype(self.dtype)

  def source(self, img, ref_torso_img, bg_img, segmap):
    x = jnp.concatenate([img, ref_torso_img, bg_img, segmap[..., :3]], -1)  # [B,512,512,12]
    return {"cano_planes": self._mm(x, self.w_src), "sr": {"bg": bg_img}}

  def _volume(self, src, camera, cond_cano, cond_src, cond_tgt, key):
    b = camera.shape[0]
    secc = self._mm(jnp.concatenate([cond_cano, cond_src, cond_tgt], -1), self.w_secc)
    noise = 0.0 if key is None else 0.05 * jax.random.uniform(key, (b, 1, 1, 1), self.dtype)
    vol = src["cano_planes"].astype(self.dtype) + secc + noise
    small = jax.image.resize(jnp.tanh(vol), (b, 128, 128, 3), "linear")
    change = jnp.mean(jnp.abs(cond_tgt - cond_src), axis=(1, 2, 3)).astype(self.dtype)
    depth = 2.0 + 0.5 * small[..., 1:2] + 20.0 * change[:, None, None, None]
    return vol, depth

  def depth(self, src, camera, cond_cano, cond_src, cond_tgt, *, key=None):
    return self._volume(src, camera, cond_cano, cond_src, cond_tgt, key)[1]

  def frame(self, src, camera, cond_cano, cond_src, cond_tgt, kp_s, kp_d, *, key=None, head_threshold=0.9, **_):
    b = camera.shape[0]
    vol, depth = self._volume(src, camera, cond_cano, cond_src, cond_tgt, key)
    g = self._mm(jnp.concatenate([camera, kp_s.reshape(b, -1), kp_d.reshape(b, -1)], -1), self.w_cam)
    image = jnp.tanh(vol + g[:, None, None, :])
    small = jax.image.resize(image, (b, 128, 128, 3), "linear")
    w = jax.nn.sigmoid(small[..., :1] * 4)
    return {"image": image, "image_raw": small, "image_depth": depth, "weights_img": w,
            "occlusion_2": jax.image.resize(w, (b, 256, 256, 1), "linear") * head_threshold}


def tiny_portrait(mediapipe_dir, seed: int = 0, **kw):
  """`Portrait.random_weights` with this stand-in network and a 1-layer random HuBERT (fast pipeline tests)."""
  from r3p import api
  from r3p.models import hubert as H
  small = H.HubertConfig(num_hidden_layers=1, intermediate_size=1024, conv_dim=(32,) * 7, num_conv_pos_embeddings=16)
  return api.Portrait.random_weights(seed, landmarker=mediapipe_dir / "face_landmarker.task",
                                     segmenter=mediapipe_dir / "selfie_segmentation.tflite", hubert_config=small,
                                     model=TinyPortraitNet(rngs=nnx.Rngs(seed)), log=lambda s: None, **kw)
