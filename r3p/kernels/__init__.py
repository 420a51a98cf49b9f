"""Custom kernels of r3p (Pallas), one tokamax-style folder per op: `base.py` reference, `pallas_*.py`, `api.py`."""
