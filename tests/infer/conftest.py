"""Shared fixtures of the r3p infer tests: the example assets, a 2-s cut of the example audio and ONE `Portrait`
(random weights, stand-in network `tiny_net.py`, 1-layer HuBERT) for the whole session, so that the source
portrait is prepared once across the test modules."""
import pytest
from flax import nnx

from r3p import api
from r3p.models import hubert as H
from tests.conftest import shared_path
from tests.infer.tiny_net import TinyPortraitNet

SMALL_HUBERT = H.HubertConfig(num_hidden_layers=1, intermediate_size=1024, conv_dim=(32,) * 7,
                              num_conv_pos_embeddings=16)


@pytest.fixture(scope="session")
def assets():
  return {"src": shared_path("assets", "examples", "Macron.png"),
          "aud": shared_path("assets", "examples", "Obama_5s.wav"),
          "bg": shared_path("assets", "examples", "bg.png"),
          "mp": shared_path("assets", "mediapipe", "face_landmarker.task").parent}


@pytest.fixture(scope="session")
def short_wav(assets, tmp_path_factory):
  """The first 2 s of the example audio (keeps the whole-clip tests short on a 2-core CPU)."""
  import soundfile as sf
  x, sr = sf.read(str(assets["aud"]), dtype="int16")
  p = tmp_path_factory.mktemp("aud") / "obama_2s.wav"
  sf.write(p, x[:2 * sr], sr, subtype="PCM_16")
  return p


@pytest.fixture(scope="session")
def portrait(assets):
  mp = assets["mp"]
  return api.Portrait.random_weights(0, landmarker=mp / "face_landmarker.task",
                                     segmenter=mp / "selfie_segmentation.tflite", hubert_config=SMALL_HUBERT,
                                     model=lambda dtype: TinyPortraitNet(dtype=dtype, rngs=nnx.Rngs(0)),
                                     log=lambda s: None)
