"""Fused tri-plane ray-marching op: `api.ray_march` (XLA reference or Pallas kernel)."""
