"""Test session setup: 8 fake CPU devices before any JAX backend starts; paths to ../shared.

`../shared` (fixtures and assets) sits beside the repository; R3P_SHARED overrides it. Tests that need it skip
with the reason when it is absent. Slow tests (marker `slow`) run only with R3P_SLOW=1 or `-m slow`.
"""
import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

try:
  jax.config.update("jax_num_cpu_devices", 8)
except Exception:  # backend already initialised by a plugin: the XLA flag above still applies
  pass

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("R3P_SHARED", REPO.parent / "shared")).resolve()
FIXTURES = SHARED / "fixtures"
ASSETS = SHARED / "assets"


def shared_path(*parts) -> pathlib.Path:
  """A path under ../shared, or skip the test saying which file is missing."""
  p = SHARED.joinpath(*parts)
  if not p.exists():
    pytest.skip(f"shared asset missing: {p}")
  return p


def pytest_collection_modifyitems(config, items):
  run_slow = os.environ.get("R3P_SLOW") == "1" or "slow" in (config.getoption("-m") or "")
  if run_slow:
    return
  skip = pytest.mark.skip(reason="slow test: set R3P_SLOW=1 (or -m slow) to run it")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
