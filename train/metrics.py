"""clu MetricWriter interface without TensorFlow.

`clu.metric_writers/__init__.py` imports its TF summary writer unconditionally, so on a TF-free install we
register the package as a bare namespace (its __path__ only) and import the TF-free submodules (interface,
logging_writer, multi_writer) directly; TensorBoard events are written by tensorboardX behind the interface.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np


def _metric_writers():
  try:
    import clu.metric_writers as mw  # noqa: F401
    return mw.interface, mw.LoggingWriter, mw.MultiWriter
  except ModuleNotFoundError as e:
    if "tensorflow" not in str(e):
      raise
  sys.modules.pop("clu.metric_writers", None)
  spec = importlib.util.find_spec("clu")
  pkg = types.ModuleType("clu.metric_writers")
  pkg.__path__ = [spec.submodule_search_locations[0] + "/metric_writers"]
  sys.modules["clu.metric_writers"] = pkg
  interface = importlib.import_module("clu.metric_writers.interface")
  logging_writer = importlib.import_module("clu.metric_writers.logging_writer")
  multi_writer = importlib.import_module("clu.metric_writers.multi_writer")
  return interface, logging_writer.LoggingWriter, multi_writer.MultiWriter


interface, LoggingWriter, MultiWriter = _metric_writers()
MetricWriter = interface.MetricWriter


class TensorboardXWriter(MetricWriter):
  """clu MetricWriter writing TensorBoard event files through tensorboardX."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter
    self._w = SummaryWriter(logdir)

  def write_summaries(self, step, values, metadata=None):
    for k, v in values.items():
      self._w.add_scalar(k, np.asarray(v).item(), step)

  def write_scalars(self, step, scalars):
    for k, v in scalars.items():
      self._w.add_scalar(k, float(v), step)

  def write_images(self, step, images):
    for k, v in images.items():
      self._w.add_images(k, np.asarray(v), step, dataformats="NHWC")

  def write_videos(self, step, videos):
    del step, videos  # not used by the trainer

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    for k, v in texts.items():
      self._w.add_text(k, v, step)

  def write_histograms(self, step, arrays, num_buckets=None):
    for k, v in arrays.items():
      self._w.add_histogram(k, np.asarray(v), step)

  def write_hparams(self, hparams):
    self._w.add_text("hparams", "\n".join(f"{k}: {v}" for k, v in sorted(hparams.items())), 0)

  def flush(self):
    self._w.flush()

  def close(self):
    self._w.close()


def make_writer(workdir: str, *, just_logging: bool = False) -> MetricWriter:
  if just_logging:
    return LoggingWriter()
  return MultiWriter([LoggingWriter(), TensorboardXWriter(workdir)])
