"""{torch state_dict key: np.ndarray} -> NNX state. The one place where tensor layouts change.

NNX attribute paths mirror the torch prefixes, so the torch key of a variable is its state path joined by ".".
Each variable carries a `torch_layout` tag (set by `r3p.nn.layers.param` or by hand):

  none    copied as is (biases, norms, buffers, embeddings)
  conv    torch [O, I, *k] -> JAX [*k, I, O] (1-D, 2-D and 3-D convolutions)
  convT   torch ConvTranspose [I, O, *k] -> [*k, I, O]
  linear  torch [out, in] -> [in, out]

Folding of re-parametrised weights (spectral norm, weight norm) happens on the torch dict before loading, with
the helpers below, so the NNX modules only hold effective weights.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx


class StateDictError(ValueError):
  """A state dict that does not fit the model (the message names the key)."""


def to_jax_layout(value: np.ndarray, layout: str) -> np.ndarray:
  v = np.asarray(value)
  if layout == "none":
    return v
  if layout == "conv":
    return np.transpose(v, tuple(range(2, v.ndim)) + (1, 0))
  if layout == "convT":
    return np.transpose(v, tuple(range(2, v.ndim)) + (0, 1))
  if layout == "linear":
    return v.T
  raise ValueError(f"unknown torch_layout {layout!r}")


def to_torch_layout(value: np.ndarray, layout: str) -> np.ndarray:
  """Inverse of `to_jax_layout` (used to export and in round-trip tests)."""
  v = np.asarray(value)
  if layout == "none":
    return v
  nk = v.ndim - 2
  if layout == "conv":
    return np.transpose(v, (v.ndim - 1, v.ndim - 2) + tuple(range(nk)))
  if layout == "convT":
    return np.transpose(v, (v.ndim - 2, v.ndim - 1) + tuple(range(nk)))
  if layout == "linear":
    return v.T
  raise ValueError(f"unknown torch_layout {layout!r}")


def torch_key(path: tuple) -> str:
  return ".".join(str(p) for p in path)


def model_variables(model: nnx.Module) -> dict[str, nnx.Variable]:
  """{torch key: variable} for every Param/BatchStat of the model (other variable types are not weights)."""
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat))):
    out[torch_key(path)] = var
  return out


def load_state_dict(model: nnx.Module, sd: Mapping[str, np.ndarray], *, prefix: str = "",
                    unused: Iterable[str] = (), strict: bool = True) -> list[str]:
  """Copy `sd` (torch names/layouts) into `model` in place.

  Args:
    model: the NNX module whose paths mirror the torch keys below `prefix`.
    sd: the torch state dict (numpy arrays), already folded (spectral/weight norm).
    prefix: torch key prefix of `model` (e.g. "decoder."); keys outside it are ignored.
    unused: torch keys (below prefix, without it) that are known and deliberately not loaded.
    strict: raise on a missing, unexpected or mis-shaped key.
  Returns:
    the torch keys (with prefix) that were loaded.
  """
  variables = model_variables(model)
  sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
  unused = set(unused)
  loaded = []
  missing = [k for k in variables if k not in sub]
  unexpected = [k for k in sub if k not in variables and k not in unused]
  if strict and missing:
    raise StateDictError(f"missing key {prefix}{missing[0]} in state dict ({len(missing)} missing in all)")
  if strict and unexpected:
    raise StateDictError(f"unexpected key {prefix}{unexpected[0]} in state dict ({len(unexpected)} unexpected in all)")
  for k, var in variables.items():
    if k not in sub:
      continue
    layout = getattr(var, "torch_layout", "none")
    val = to_jax_layout(sub[k], layout)
    cur = var.get_value() if hasattr(var, "get_value") else var.value
    if tuple(val.shape) != tuple(cur.shape):
      raise StateDictError(f"shape mismatch for {prefix}{k}: checkpoint {tuple(np.shape(sub[k]))} "
                           f"(as {layout}: {tuple(val.shape)}), model {tuple(cur.shape)}")
    # set_value also fills abstract variables (models built with nnx.eval_shape: no random init cost).
    new = jnp.asarray(val, dtype=cur.dtype)
    if hasattr(var, "set_value"):
      var.set_value(new)
    else:
      var.value = new
    loaded.append(prefix + k)
  return loaded


def abstract_leaves(model: nnx.Module) -> list[str]:
  """Paths of variables that still hold abstract shapes (not filled by a load)."""
  import jax
  out = []
  for path, var in nnx.to_flat_state(nnx.state(model)):
    v = var.get_value() if hasattr(var, "get_value") else var.value
    if isinstance(v, jax.ShapeDtypeStruct):
      out.append(torch_key(path))
  return out


def export_state_dict(model: nnx.Module, prefix: str = "") -> dict[str, np.ndarray]:
  """NNX -> {torch key: np.ndarray} in torch layouts (the inverse of load_state_dict)."""
  return {prefix + k: to_torch_layout(np.asarray(v[...]), getattr(v, "torch_layout", "none"))
          for k, v in model_variables(model).items()}


def fold_spectral_norm(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Replace `X.weight_orig`, `X.weight_u`, `X.weight_v` by `X.weight` as torch's spectral_norm eval does.

  weight = weight_orig / sigma, sigma = u . (W_mat v), W_mat = weight_orig reshaped to [out, -1], with the stored
  u, v and no power iteration (eval mode). Arithmetic in float32, as torch does it.
  """
  out = dict(sd)
  for k in list(sd):
    if k.endswith(".weight_orig"):
      base = k[: -len(".weight_orig")]
      w = np.asarray(sd[k], np.float32)
      u = np.asarray(sd[base + ".weight_u"], np.float32)
      v = np.asarray(sd[base + ".weight_v"], np.float32)
      sigma = np.dot(u, w.reshape(w.shape[0], -1) @ v)
      out[base + ".weight"] = (w / sigma).astype(np.float32)
      for s in (".weight_orig", ".weight_u", ".weight_v"):
        out.pop(base + s)
  return out


def fold_weight_norm(sd: Mapping[str, np.ndarray], dim: int | Callable[[str], int] = 0) -> dict[str, np.ndarray]:
  """Replace `X.weight_g`, `X.weight_v` (or torch parametrizations `X.parametrizations.weight.original0/1`)
  by `X.weight = g * v / ||v||`, the norm taken over every axis except `dim` (torch weight_norm semantics)."""
  out = dict(sd)
  pairs = []
  for k in sd:
    if k.endswith(".weight_g"):
      pairs.append((k[: -len(".weight_g")], k, k[: -1] + "v"))
    elif k.endswith(".parametrizations.weight.original0"):
      base = k[: -len(".parametrizations.weight.original0")]
      pairs.append((base, k, base + ".parametrizations.weight.original1"))
  for base, gk, vk in pairs:
    g = np.asarray(sd[gk], np.float32)
    v = np.asarray(sd[vk], np.float32)
    d = dim(base) if callable(dim) else dim
    d = d % v.ndim
    axes = tuple(a for a in range(v.ndim) if a != d)
    norm = np.sqrt(np.sum(np.square(v), axis=axes, keepdims=True))
    out[base + ".weight"] = (g.reshape(norm.shape) * v / norm).astype(np.float32)
    out.pop(gk)
    out.pop(vk)
  return out
