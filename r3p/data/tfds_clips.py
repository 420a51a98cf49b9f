"""TFDS builder (array_record, no TensorFlow) for processed talking-head clips: one record per video frame.

    python -m r3p.data.build --out DIR            # the embedded synthetic set -> DIR/r3p_talking_heads/<config>/1.0.0

Works without TensorFlow: `GeneratorBasedBuilder.download_and_prepare()` with `file_format='array_record'`
serialises through TFDS's own protobuf example writer, and `tfds.builder_from_directory(...).as_data_source()`
decodes with numpy. Records keep the generation order (`disable_shuffling`), so record `offset[c] + t` is frame t
of clip c; the clip table is in the dataset's metadata (`metadata.json`).

Per-frame features (S = image size; images uint8 = round((x + 1)·127.5) of [-1,1] images, zlib-compressed):
  image       [S,S,3] uint8  the full frame with the clip's static background (official `com_imgs`)
  head_img    [S,S,3] uint8  the head on a flat background (official `head_imgs`, head-only frame)
  torso_img   [S,S,3] uint8  torso only, neck extended under the head (official `inpaint_torso_imgs`)
  bg_img      [S,S,3] uint8  the clip background (official `bg_img/<clip>.jpg`)
  secc        [S,S,3] uint8  SECC map of this frame; cano_secc: the canonical (neutral, frontal) SECC
  head_mask   [S,S,1] uint8  {0,1}; segmap [S,S] uint8 class ids (0 bg, 1 hair, 2 body skin, 3 face, 4 clothes, 5 other)
  camera      [25] f32       EG3D camera (c2w 16 + normalised K 9)
  ident [6], expr [3] f32, yaw [] f32   the face-model codes (for the synthetic set; real clips: 3DMM id/exp/pose)
  kp          [68,3] f32     landmarks in [-1,1] (x → W, y → H, z = 0)
  audio       [2,80] f32     audio features of the frame (two 50-Hz frames per 25-fps video frame)
  clip, frame int32          clip index and frame index within the clip
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

NAME = "r3p_talking_heads"
VERSION = "1.0.0"
AUDIO_SHAPE = (2, 80)
N_KP = 68


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[-1,1] float image -> uint8 (round((x + 1)·127.5))."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(x: np.ndarray) -> np.ndarray:
  return np.asarray(x, np.float32) / 127.5 - 1.0


@dataclasses.dataclass(eq=False)
class ClipsConfig(tfds.core.BuilderConfig):
  """What to build: `source` ('synthetic'), image size, clip count and length, seed."""
  source: str = "synthetic"
  size: int = 64
  n_clips: int = 16
  n_frames: int = 32
  seed: int = 0


def config_for(source: str = "synthetic", *, size: int = 64, n_clips: int = 16, n_frames: int = 32,
               seed: int = 0) -> ClipsConfig:
  return ClipsConfig(name=f"{source}_{size}px_{n_clips}x{n_frames}_seed{seed}", source=source, size=size,
                     n_clips=n_clips, n_frames=n_frames, seed=seed,
                     description=f"{n_clips} {source} clips of {n_frames} frames at {size}², seed {seed}")


def features(size: int) -> tfds.features.FeaturesDict:
  img = lambda c: tfds.features.Tensor(shape=(size, size, c), dtype=np.uint8,  # noqa: E731
                                       encoding=tfds.features.Encoding.ZLIB)
  f32 = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.float32)  # noqa: E731
  return tfds.features.FeaturesDict({
      "image": img(3), "head_img": img(3), "torso_img": img(3), "bg_img": img(3), "secc": img(3),
      "cano_secc": img(3), "head_mask": img(1),
      "segmap": tfds.features.Tensor(shape=(size, size), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB),
      "camera": f32(25), "ident": f32(6), "expr": f32(3), "yaw": f32(), "kp": f32(N_KP, 3),
      "audio": f32(*AUDIO_SHAPE),
      "clip": tfds.features.Scalar(dtype=np.int32), "frame": tfds.features.Scalar(dtype=np.int32),
  })


class R3pTalkingHeads(tfds.core.GeneratorBasedBuilder):
  """Processed talking-head clips, one record per frame (see the module docstring)."""

  VERSION = tfds.core.Version(VERSION)
  BUILDER_CONFIGS = [config_for("synthetic")]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default looks the module up through `importlib_resources` (not a dependency); the file suffices.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    lengths = [c.n_frames] * c.n_clips
    return tfds.core.DatasetInfo(
        builder=self, description=c.description, features=features(c.size), disable_shuffling=True,
        metadata=tfds.core.MetadataDict(clip_lengths=lengths, clip_offsets=list(np.cumsum([0] + lengths[:-1])
                                                                                   .tolist()),
                                        size=c.size, source=c.source, seed=c.seed))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    c = self.builder_config
    if c.source != "synthetic":
      raise ValueError(f"unknown clip source {c.source!r}; only 'synthetic' is built in")
    from r3p.data import synthetic
    for clip in range(c.n_clips):
      fr = synthetic.render_clip(c.seed, clip, c.n_frames, c.size)
      for t in range(c.n_frames):
        yield clip * c.n_frames + t, {
            **{k: to_uint8(fr[k][t]) for k in ("image", "head_img", "torso_img", "bg_img", "secc", "cano_secc")},
            "head_mask": fr["head_mask"][t].astype(np.uint8), "segmap": fr["segmap"][t].astype(np.uint8),
            "camera": fr["camera"][t], "ident": fr["ident"], "expr": fr["expr"][t], "yaw": fr["yaw"][t],
            "kp": fr["kp"][t], "audio": fr["audio"][t], "clip": clip, "frame": t}


def config_arg(config: ClipsConfig) -> ClipsConfig | str:
  """TFDS refuses a custom config named like a registered one: pass the registered one by name."""
  known = {c.name: c for c in R3pTalkingHeads.BUILDER_CONFIGS}
  if config.name in known:
    if known[config.name] != config and dataclasses.asdict(known[config.name]) != dataclasses.asdict(config):
      raise ValueError(f"config {config.name!r} differs from the registered one of that name")
    return config.name
  return config


def build(out: str, config: ClipsConfig) -> str:
  """Write the dataset under `out` (TFDS data_dir); returns the version directory holding the array_record files."""
  builder = R3pTalkingHeads(config=config_arg(config), data_dir=out, file_format="array_record")
  builder.download_and_prepare()
  return str(builder.data_path)
