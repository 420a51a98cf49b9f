"""The r3p web app: the official Real3D-Portrait Gradio demo rebuilt on `r3p.api`.

    python -m r3p.app --random_weights                    # smoke test (meaningless pictures)
    python -m r3p.app --ckpt_dir r3p_ckpt [--server_name 127.0.0.1] [--server_port 7860] [--share]

Binds to 127.0.0.1 unless told otherwise. The networks are loaded once; canonical planes are cached per portrait
(`Portrait.prepare`), so a second generation on the same portrait starts faster. One generation at a time (Gradio
queue, concurrency 1). Controls and defaults are the official app's (seed 42; an empty pose video means a static
pose; no audio but a pose video: the video drives). Errors are shown as one sentence in the page. Each job writes
into its own temporary folder, removed when the job ends, fails or is cancelled (Stop button / `job.cancel()`);
Gradio's copies of uploads and results are removed by its cache cleaner (`delete_cache`).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

APP_SEED = 42  # the official app fixes the seed to 42
MAX_SECONDS = 120.0
MAX_FILE_SIZE = "50mb"


def _duration_s(path: str) -> float:
  """Seconds of an audio/video input (ffmpeg's report), inf when unknown."""
  import imageio_ffmpeg

  try:
    if path.lower().endswith(".mp4"):
      return float(imageio_ffmpeg.count_frames_and_secs(path)[1])
    from r3p.audio import features as F
    return F.load_audio(path).seconds
  except Exception:  # noqa: BLE001 (the pipeline reports unreadable files with its own message)
    return 0.0


def _short_paths(msg: str, paths) -> str:
  """The user's file names instead of the server's upload-cache paths in a message."""
  for p in sorted(paths, key=len, reverse=True):
    msg = msg.replace(p, os.path.basename(p))
  return msg


def generate_fn(portrait, max_seconds: float = MAX_SECONDS, workdir: str | None = None,
                max_frames: int | None = None, chunk: int | None = None):
  """The app's callback, also usable without a browser: a generator function yielding (video path | None, cropped
  source | None, status markdown) after each rendered chunk; its last item is the result (or an error sentence).

  Each job writes into its own folder under `workdir` (default: the system temp dir), removed when the generator
  finishes, fails or is closed: Gradio copies the result video into its own cache before it resumes the generator,
  and a cancelled job (Stop button, `gradio_client` `job.cancel()`) closes the generator at its next yield, which
  closes `Portrait.animate` (its writer deletes the partial mp4) and then removes the folder. Callers outside
  Gradio copy the video before they resume the generator past the last item."""
  from r3p import api

  def generate(src_img, drv_aud, drv_pose, bg_img, blink_mode, mouth_amp, temperature, head_torso_threshold,
               map_to_init_pose, out_mode, seed, progress=None):
    if not src_img:
      yield None, None, "**Error:** please upload a source portrait."
      return
    if not drv_aud and not drv_pose:
      yield None, None, "**Error:** please upload a driving audio (or a pose video to drive with)."
      return
    if not drv_aud:
      drv_aud = drv_pose  # official app: no audio but a pose video -> the video drives
    secs = _duration_s(str(drv_aud))
    if secs > max_seconds:
      yield (None, None,
             f"**Error:** the driving clip lasts {secs:.0f} s; this server accepts up to {max_seconds:.0f} s.")
      return
    uploads = [str(f) for f in (src_img, drv_aud, drv_pose, bg_img) if f]
    out_dir = tempfile.mkdtemp(prefix="r3p_app_", dir=workdir)
    out = os.path.join(out_dir, "result.mp4")
    preview, events = None, None
    try:
      prep = portrait.prepare(str(src_img), str(bg_img) if bg_img else None)
      preview = prep["images_u8"]["input"]
      # this call computes the canonical planes (or finds them cached); animate below reuses them
      status = "canonical planes reused" if prep["cached"] else "canonical planes computed"
      yield None, preview, f"Source portrait prepared ({status}); computing the motion…"
      result = None
      extra = {"chunk": int(chunk)} if chunk else {}
      events = portrait.animate(str(src_img), str(drv_aud), out, drv_pose=str(drv_pose) if drv_pose else "static",
                                bg_img=str(bg_img) if bg_img else None, blink_mode=blink_mode,
                                mouth_amp=float(mouth_amp), temperature=float(temperature),
                                head_torso_threshold=float(head_torso_threshold),
                                map_to_init_pose=bool(map_to_init_pose), out_mode=out_mode,
                                seed=int(seed), max_frames=max_frames, **extra)
      for ev in events:
        if ev.stage == "render":
          msg = f"{ev.fps:.2f} frames/s, ETA {ev.eta_s:.0f} s"
          if progress is not None:
            progress((ev.done, ev.total), desc=msg, unit="frames")
          if ev.done < ev.total:  # the last chunk is followed at once by 'done'
            yield None, preview, f"Rendering: {ev.done} / {ev.total} frames, {msg}."
        elif ev.stage == "done":
          note = " (RANDOM weights: the pictures are meaningless)" if portrait.random_weights else ""
          result = (str(ev.path), preview, f"Done: {ev.done} frames at {ev.fps:.2f} frames/s; {status}{note}.")
      yield result if result else (None, preview, "**Error:** generation stopped early.")
    except api.user_errors() as e:
      yield None, preview, f"**Error:** {_short_paths(api.error_line(e), uploads)}"
    except Exception as e:  # noqa: BLE001 (the server keeps serving; the message is shown in the page)
      yield (None, preview,
             f"**Error:** unexpected failure ({type(e).__name__}: {_short_paths(api.error_line(e), uploads)})")
    finally:  # also on GeneratorExit (a cancelled job): nothing half-written stays behind
      if events is not None:
        events.close()  # Portrait.animate's writer removes its partial files
      shutil.rmtree(out_dir, ignore_errors=True)

  return generate


def build_app(portrait, *, max_seconds: float = MAX_SECONDS, max_frames: int | None = None,
              workdir: str | None = None, chunk: int | None = None):
  """The Blocks app around `portrait` (an `r3p.api.Portrait`). max_frames cuts every clip and chunk sets the frames
  per network call (previews, tests); workdir holds the per-job output folders (default: the system temp dir)."""
  import gradio as gr

  gen = generate_fn(portrait, max_seconds, workdir=workdir, max_frames=max_frames, chunk=chunk)

  def run(src_img, drv_aud, drv_pose, bg_img, blink_mode, mouth_amp, temperature, head_torso_threshold,
          map_to_init_pose, out_mode, seed, progress=gr.Progress()):
    yield from gen(src_img, drv_aud, drv_pose, bg_img, blink_mode, mouth_amp, temperature, head_torso_threshold,
                   map_to_init_pose, out_mode, seed, progress=progress)

  with gr.Blocks(title="r3p — Real3D-Portrait in JAX", delete_cache=(600, 3600)) as demo:
    gr.Markdown("# r3p: Real3D-Portrait in JAX\nOne portrait + a driving audio (or video) → a talking-portrait "
                "video." + ("\n\n**Running with RANDOM weights: the pictures are meaningless.**"
                            if portrait.random_weights else ""))
    with gr.Row():
      with gr.Column():
        # gr.File, not gr.Image: gr.Image decodes uploads itself and a corrupt file would fail before r3p can
        # explain it; the auto-cropped preview shows the picture.
        src_img = gr.File(label="Source portrait (PNG/JPEG)", file_types=["image"], type="filepath", elem_id="src_img")
        drv_aud = gr.Audio(type="filepath", label="Driving audio", elem_id="drv_aud")
        drv_pose = gr.Video(label="Pose video (optional; empty = static pose)", elem_id="drv_pose")
        bg_img = gr.File(label="Background (optional)", file_types=["image"], type="filepath", elem_id="bg_img")
      with gr.Column():
        blink_mode = gr.Radio(["period", "none"], value="period", label="Blink mode")
        mouth_amp = gr.Slider(0.0, 1.0, value=0.45, step=0.05, label="Mouth amplitude")
        temperature = gr.Slider(0.0, 1.0, value=0.2, step=0.05, label="Temperature")
        thr = gr.Slider(0.0, 1.0, value=0.9, step=0.05, label="Head-torso threshold")
        map_pose = gr.Checkbox(value=True, label="map_to_init_pose")
        out_mode = gr.Radio(["final", "concat_debug"], value="final", label="Output")
        seed = gr.Number(value=APP_SEED, precision=0, label="Seed")
        with gr.Row():
          btn = gr.Button("Generate", variant="primary", elem_id="generate")
          stop = gr.Button("Stop", variant="stop", elem_id="stop")
      with gr.Column():
        video = gr.Video(label="Result", elem_id="result")
        preview = gr.Image(label="Auto-cropped source", elem_id="preview", interactive=False)
        status = gr.Markdown(elem_id="status")
    ev = btn.click(run, [src_img, drv_aud, drv_pose, bg_img, blink_mode, mouth_amp, temperature, thr, map_pose,
                         out_mode, seed], [video, preview, status], api_name="generate", concurrency_limit=1)
    # Stop cancels the running job: Gradio closes the generator at its next yield (after the current chunk)
    # (outputs to all three: their status becomes this event's 'complete', not the cancelled one's 'error' badge)
    stop.click(lambda: (None, None, "Stopped."), None, [video, preview, status], cancels=[ev],
               api_visibility="private", queue=False)
  demo.queue(default_concurrency_limit=1)
  return demo


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m r3p.app", description=__doc__.split("\n\n")[0])
  ap.add_argument("--server_name", default="127.0.0.1")
  ap.add_argument("--server_port", type=int, default=7860)
  ap.add_argument("--share", action="store_true", help="also open a public Gradio share link")
  g = ap.add_mutually_exclusive_group(required=True)
  g.add_argument("--ckpt_dir", help="r3p checkpoint folder (python -m r3p.convert)")
  g.add_argument("--random_weights", action="store_true", help="seeded random weights (meaningless pictures)")
  ap.add_argument("--landmarker")
  ap.add_argument("--segmenter")
  ap.add_argument("--bfm_dir")
  ap.add_argument("--max_seconds", type=float, default=MAX_SECONDS, help="longest driving clip accepted")
  ap.add_argument("--max_frames", type=int, help="cut every result to this many frames (previews, smoke runs)")
  ap.add_argument("--chunk", type=int, help="frames per compiled network call (default: r3p.api's)")
  args = ap.parse_args(argv)
  from r3p import api
  try:
    kw = dict(landmarker=args.landmarker, segmenter=args.segmenter, bfm_dir=args.bfm_dir)
    portrait = (api.Portrait.random_weights(0, **kw) if args.random_weights
                else api.Portrait.from_checkpoints(args.ckpt_dir, **kw))
  except api.user_errors() as e:
    print(f"python -m r3p.app: error: {api.error_line(e)}", file=sys.stderr)
    return 2
  build_app(portrait, max_seconds=args.max_seconds, max_frames=args.max_frames, chunk=args.chunk).launch(
      server_name=args.server_name, server_port=args.server_port, share=args.share, max_file_size=MAX_FILE_SIZE)
  return 0


if __name__ == "__main__":
  sys.exit(main())
