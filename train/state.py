"""Train state, optimiser param groups and the functional jitted step (STYLE.md §9.5, TRAINING §1.3, §6.5).

State (a plain pytree, all leaves jax arrays): {'step', 'params', 'rest' (BatchNorm stats), 'opt', 'lambdas'}.
The NNX graphdef is static. `make_step` returns `jax.jit(step, in_shardings, out_shardings, donate_argnums=0)`.
RNG: key = fold_in(key(seed), step) inside the step, so nothing RNG-related is checkpointed.
"""
from __future__ import annotations

import importlib
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from r3p import parallel


def stage_module(cfg):
  """The stage module `train.stages.<cfg.stage>` (generic: a new stage is a new file, no registry to edit).

  A stage module defines `build_model(cfg, rngs)`, `param_group(path) -> group`, `g_loss(model, cfg, batch, key,
  step, lambdas) -> (loss, (metrics, lambdas))` and `init_lambdas(cfg)`."""
  name = str(cfg.stage)
  if not name.isidentifier():
    raise ValueError(f"config.stage must be a module name under train/stages/, got {name!r}")
  try:
    return importlib.import_module(f"train.stages.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"train.stages.{name}":
      raise
    raise ValueError(f"unknown stage {name!r}: no module train/stages/{name}.py") from None


# ------------------------------------------------------------------ schedules (TRAINING §1.3 table)

def lr_schedules(o) -> dict[str, Callable]:
  """Per-group lr(step): warmup, ×decay every `decay_every`, floors and the official gating."""
  def base(step):
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, step / max(o.warmup, 1)) if o.warmup > 0 else 1.0
    return o.lr_g * warm * o.decay ** jnp.floor(step / o.decay_every)

  def gated(start):
    def f(step):
      return jnp.where(step >= max(start, 1), jnp.maximum(o.floor, base(step)), 0.0)
    return f

  def cano(step):
    s = jnp.asarray(step, jnp.float32)
    late = jnp.maximum(o.floor, jnp.minimum(1.0, s / (o.start_adv + 20000)) * base(step))
    lr = jnp.where(s <= o.cano_hold, o.cano_hold_lr, late)   # the 5e-6 floor during the "frozen" hold [as released]
    return jnp.where(s >= o.stop_update_i2p, 0.0, lr)

  def sr_only_after_adv(f):
    # `two_stage_training`: from start_adv on only the SR trains (official requires_grad=False on cano I2P,
    # MA and decoder); a zero lr freezes them the same way (their Adam moments no longer matter).
    if not o.get("two_stage_training", False):
      return f
    return lambda step: jnp.where(jnp.asarray(step) >= o.start_adv, 0.0, f(step))

  return {"cano": sr_only_after_adv(cano), "ma": sr_only_after_adv(gated(0)),
          "decoder": sr_only_after_adv(gated(o.decoder_start)), "sr": gated(o.sr_start)}


def make_optimizer(cfg, params) -> optax.GradientTransformation:
  """clip_by_global_norm(1) then per-group Adam(β=(0, 0.99)) with its schedule (groups at lr 0 still update
  their Adam moments, as the official per-group lr gating does)."""
  o = cfg.optim
  stage = stage_module(cfg)
  sched = lr_schedules(o)
  groups = {g: optax.chain(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=1e-8),
                           optax.scale_by_learning_rate(sched[g])) for g in sched}
  labels = jax.tree_util.tree_map_with_path(lambda p, _: stage.param_group(tuple(k.key for k in p)), params)
  return optax.chain(optax.clip_by_global_norm(o.clip), optax.multi_transform(groups, labels))


# ------------------------------------------------------------------ state creation

def _key_name(k):
  return str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))


def _opt_shardings(abs_opt, param_shardings, default):
  """Optimiser-state shardings: a leaf whose path ends with a param's path (Adam mu/nu) takes that param's
  sharding; counts and masked placeholders are replicated."""
  table = {tuple(_key_name(k) for k in p): s for p, s in
           jax.tree_util.tree_leaves_with_path(param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))}
  n = max(len(k) for k in table)

  def one(path, leaf):
    names = tuple(_key_name(k) for k in path)
    for length in range(min(n, len(names)), 0, -1):
      s = table.get(names[-length:])
      if s is not None and len(s.spec) <= len(getattr(leaf, "shape", ())):
        return s
    return default
  return jax.tree_util.tree_map_with_path(one, abs_opt)


class Trainer:
  """Holds the static parts (graphdef, optimiser, shardings) and the jitted step."""

  def __init__(self, cfg, mesh):
    self.cfg, self.mesh = cfg, mesh
    self.stage = stage_module(cfg)
    make = lambda: self.stage.build_model(cfg, nnx.Rngs(cfg.seed))  # noqa: E731
    abstract = nnx.eval_shape(make)
    self.graphdef, abs_params, abs_rest = nnx.split(abstract, nnx.Param, ...)
    self._abs_params, self._abs_rest = abs_params, abs_rest
    p_sh = nnx.to_pure_dict(parallel.state_shardings(abs_params, mesh))
    r_sh = nnx.to_pure_dict(parallel.state_shardings(abs_rest, mesh))
    self.tx = make_optimizer(cfg, nnx.to_pure_dict(abs_params))
    abs_opt = jax.eval_shape(self.tx.init, nnx.to_pure_dict(abs_params))
    rep = NamedSharding(mesh, P())
    o_sh = _opt_shardings(abs_opt, p_sh, rep)
    lam_sh = jax.tree.map(lambda _: rep, self.stage.init_lambdas(cfg))
    self.state_shardings = {"step": rep, "params": p_sh, "rest": r_sh, "opt": o_sh, "lambdas": lam_sh}

    def init():
      model = make()
      _, params, rest = nnx.split(model, nnx.Param, ...)
      params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
      return {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest, "opt": self.tx.init(params),
              "lambdas": self.stage.init_lambdas(cfg)}
    # Params are born sharded: the init runs under jit with the target shardings as out_shardings.
    self._init = jax.jit(init, out_shardings=self.state_shardings)
    self.abstract_state = jax.eval_shape(init)
    self.step_fn = None

  def init_state(self):
    return self._init()

  def abstract_sharded_state(self):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), self.abstract_state,
                        self.state_shardings)

  def param_shardings_json(self) -> str:
    return parallel.param_shardings_json(self.state_shardings["params"])

  def model_from(self, params, rest):
    ps = jax.tree.map(lambda x: x, self._abs_params)
    nnx.replace_by_pure_dict(ps, params)
    rs = jax.tree.map(lambda x: x, self._abs_rest)
    nnx.replace_by_pure_dict(rs, rest)
    return nnx.merge(self.graphdef, ps, rs)

  # ---------------------------------------------------------------- the step
  def make_step(self, batch_spec: dict[str, jax.ShapeDtypeStruct]):
    cfg, stage, mesh = self.cfg, self.stage, self.mesh
    base_key = jax.random.key(cfg.seed)

    def train_step(state, batch):
      step = state["step"]
      key = jax.random.fold_in(base_key, step)

      def loss_fn(params):
        model = self.model_from(params, state["rest"])
        loss, (metrics, lambdas) = stage.g_loss(model, cfg, batch, key, step, state["lambdas"])
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return loss, (metrics, lambdas, nnx.to_pure_dict(rest))

      (loss, (metrics, lambdas, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
      updates, opt = self.tx.update(grads, state["opt"], state["params"])
      params = optax.apply_updates(state["params"], updates)
      metrics = {f"loss/{k}": v for k, v in metrics.items()}
      metrics["loss/total"] = loss
      metrics["grad_norm"] = optax.global_norm(grads)
      metrics["param_norm"] = optax.global_norm(params)
      for g, f in lr_schedules(cfg.optim).items():
        metrics[f"lr/{g}"] = f(step)
      new = {"step": step + 1, "params": params, "rest": rest, "opt": opt, "lambdas": lambdas}
      return new, metrics

    data_sh = {k: parallel.batch_sharding(mesh, len(v.shape)) for k, v in batch_spec.items()}
    rep = NamedSharding(mesh, P())
    self.step_fn = jax.jit(train_step, in_shardings=(self.state_shardings, data_sh),
                           out_shardings=(self.state_shardings, rep), donate_argnums=0)
    self.data_shardings = data_sh
    return self.step_fn
