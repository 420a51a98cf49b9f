"""Face toolkit: 3DMM (BFM front model or a synthetic stand-in), SECC rasterizer, landmarks, fitting, segmentation.

Public entry points used by the inference pipeline (see `r3p.face.api`):
  - `prepare_source(image, ...)`: source portrait -> dict of [-1, 1] NHWC float32 arrays for the network.
  - `render_driving(model, id, exp, euler, trans, ...)`: per-frame target SECC, kp_d and camera.
  - `fit_driving_video(frames_or_path, model, landmarker_path)`: per-frame 3DMM coefficients of a driving video.
"""
