"""A small stand-in for the portrait network with the same `source` / `frame` interface and output shapes
(512² image, 128² raw/depth/weights, 256² occlusion), cheap enough for pipeline tests on a 2-core CPU. Every
input reaches the output, so a pipeline that drops or mixes one up changes the frames."""
import jax
import jax.numpy as jnp
from flax import nnx


class TinyPortraitNet(nnx.Module):

  def __init__(self, *, rngs: nnx.Rngs):
    self.w_src = nnx.Param(jax.random.normal(rngs.params(), (12, 3)) * 0.3)
    self.w_secc = nnx.Param(jax.random.normal(rngs.params(), (9, 3)) * 0.3)
    self.w_cam = nnx.Param(jax.random.normal(rngs.params(), (25 + 68 * 6, 3)) * 0.05)

  def source(self, img, ref_torso_img, bg_img, segmap):
    x = jnp.concatenate([img, ref_torso_img, bg_img, segmap[..., :3]], -1)  # [B,512,512,12]
    return {"cano_planes": x @ self.w_src[...], "sr": {"bg": bg_img}}

  def frame(self, src, camera, cond_cano, cond_src, cond_tgt, kp_s, kp_d, *, key=None, head_threshold=0.9, **_):
    b = camera.shape[0]
    secc = jnp.concatenate([cond_cano, cond_src, cond_tgt], -1) @ self.w_secc[...]
    g = jnp.concatenate([camera, kp_s.reshape(b, -1), kp_d.reshape(b, -1)], -1) @ self.w_cam[...]
    noise = 0.0 if key is None else 0.05 * jax.random.uniform(key, (b, 1, 1, 1))
    image = jnp.tanh(src["cano_planes"] + secc + g[:, None, None, :] + noise)
    small = jax.image.resize(image, (b, 128, 128, 3), "linear")
    w = jax.nn.sigmoid(small[..., :1] * 4)
    return {"image": image, "image_raw": small, "image_depth": 2.0 + small[..., 1:2], "weights_img": w,
            "occlusion_2": jax.image.resize(w, (b, 256, 256, 1), "linear") * head_threshold}


def tiny_portrait(mediapipe_dir, seed: int = 0):
  """`Portrait.random_weights` with this stand-in network and a 1-layer random HuBERT (fast pipeline tests)."""
  from r3p import api
  from r3p.models import hubert as H
  small = H.HubertConfig(num_hidden_layers=1, intermediate_size=1024, conv_dim=(32,) * 7, num_conv_pos_embeddings=16)
  return api.Portrait.random_weights(seed, landmarker=mediapipe_dir / "face_landmarker.task",
                                     segmenter=mediapipe_dir / "selfie_segmentation.tflite", hubert_config=small,
                                     model=TinyPortraitNet(rngs=nnx.Rngs(seed)), log=lambda s: None)
