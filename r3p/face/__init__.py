"""Face toolkit in JAX: 3DMM (user BFM or a synthetic stand-in), SECC rasterizer, landmarks, fitting, segmentation.

Modules: `bfm` (face model, geometry, EG3D camera, smoothing), `rasterize` (tiled JAX z-buffer rasterizer),
`secc` (SECC renderer, blink), `landmarks` (MediaPipe FaceLandmarker), `fit` (optax landmark fitting),
`segment` (segmentation-derived images), `prepare` (source/driving preprocessing and the CLI
`python -m r3p.face.prepare`).

Entry points for the inference pipeline (NHWC float32, images in [−1, 1], 512²), all in `r3p.face.prepare`:
  - `prepare_source(image, model, landmarker_path, segmenter_path)`: source portrait -> img (ref_head_img),
    cond_cano, cond_src, ref_torso_img, bg_img, segmap, kp_s, camera (+ the source's id/exp/euler/trans).
  - `render_driving(model, id, exp, euler, trans)`: per-frame cond_tgt, kp_d, camera (+ the official cond_src).
  - `fit_driving_video(video, model, landmarker_path)`: per-frame id/exp/euler/trans of a driving video.
`bfm.default_face_model(bfm_dir, landmarker_path)` gives the face model (the synthetic one without `bfm_dir`).
"""
