"""r3p: Real3D-Portrait in JAX/Flax NNX. Import submodules explicitly; this file stays light."""

__version__ = "0.1.0"
