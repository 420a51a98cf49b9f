"""Audio side of r3p: loading and features (`features`), the audio-to-motion driver (`drive`), memory bench.

Models live in `r3p.models.hubert`, `r3p.models.audio2motion`, `r3p.models.syncnet`.
"""
