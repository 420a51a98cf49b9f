"""Train state, optimiser param groups and the functional jitted step (STYLE.md §9.5, TRAINING §1.3, §6.5).

State (a plain pytree, all leaves jax arrays): {'step', 'params', 'rest' (BatchNorm stats), 'opt', 'lambdas'}
and, for a stage with a discriminator (`build_discriminator`), 'disc': {'params', 'rest', 'opt'} (the official
top-level `disc` key, its own Adam). The NNX graphdefs are static. `make_step` returns
`jax.jit(step, in_shardings, out_shardings, donate_argnums=0)`: the G update, then the D update on this
iteration's detached fakes (TRAINING §2.1.4–§2.1.5, §4: G step then D step per batch).
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
from r3p.losses import adversarial


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


def d_lr_schedule(o) -> Callable:
  """D lr(global step) = max(floor, lr_d·c·decay^(step//decay_every)), c = R/(R+1) with R = d_reg_interval
  (the lazy-regularisation correction; TRAINING §1.3 'D' row, §1.4)."""
  c = o.d_reg_interval / (o.d_reg_interval + 1)

  def f(step):
    s = jnp.asarray(step, jnp.float32)
    return jnp.maximum(o.floor, o.lr_d * c * o.decay ** jnp.floor(s / o.decay_every))
  return f


def make_d_optimizer(cfg) -> optax.GradientTransformation:
  """clip_by_global_norm(clip) then Adam(β1^c, β2^c), c = 16/17; the lr of `d_lr_schedule` is applied by the
  step at the *global* step (the D's own update count lags it by the steps before the D starts)."""
  o = cfg.optim
  c = o.d_reg_interval / (o.d_reg_interval + 1)
  return optax.chain(optax.clip_by_global_norm(o.clip), optax.scale_by_adam(b1=o.b1 ** c, b2=o.b2 ** c, eps=1e-8))


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


def _merge_pure(graphdef, abs_params, abs_rest, params, rest):
  """A module from pure dicts: copies of the abstract states (never mutate the shared ones) filled, then merged."""
  ps = jax.tree.map(lambda x: x, abs_params)
  nnx.replace_by_pure_dict(ps, params)
  rs = jax.tree.map(lambda x: x, abs_rest)
  nnx.replace_by_pure_dict(rs, rest)
  return nnx.merge(graphdef, ps, rs)


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

    # The discriminator: its own params/rest/Adam, sharded by the same logical-axis table.
    self.has_disc = hasattr(self.stage, "build_discriminator")
    if self.has_disc:
      make_d = lambda: self.stage.build_discriminator(  # noqa: E731
          cfg, nnx.Rngs(jax.random.fold_in(jax.random.key(cfg.seed), adversarial.D_STEP_SALT)))
      self.d_graphdef, abs_dp, abs_dr = nnx.split(nnx.eval_shape(make_d), nnx.Param, ...)
      self._abs_d_params, self._abs_d_rest = abs_dp, abs_dr
      dp_sh = nnx.to_pure_dict(parallel.state_shardings(abs_dp, mesh))
      dr_sh = nnx.to_pure_dict(parallel.state_shardings(abs_dr, mesh))
      self.d_tx = make_d_optimizer(cfg)
      abs_d_opt = jax.eval_shape(self.d_tx.init, nnx.to_pure_dict(abs_dp))
      self.state_shardings["disc"] = {"params": dp_sh, "rest": dr_sh, "opt": _opt_shardings(abs_d_opt, dp_sh, rep)}

    def init():
      model = make()
      _, params, rest = nnx.split(model, nnx.Param, ...)
      params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
      state = {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest, "opt": self.tx.init(params),
               "lambdas": self.stage.init_lambdas(cfg)}
      if self.has_disc:
        _, dp, dr = nnx.split(make_d(), nnx.Param, ...)
        dp, dr = nnx.to_pure_dict(dp), nnx.to_pure_dict(dr)
        state["disc"] = {"params": dp, "rest": dr, "opt": self.d_tx.init(dp)}
      return state
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
    """G params by path, and the discriminator's under `disc.` (the official state-dict top-level key)."""
    tree = dict(self.state_shardings["params"])
    if self.has_disc:
      tree["disc"] = self.state_shardings["disc"]["params"]
    return parallel.param_shardings_json(tree)

  def disc_from(self, params, rest):
    return _merge_pure(self.d_graphdef, self._abs_d_params, self._abs_d_rest, params, rest)

  def d_update(self, disc_state: dict, d_inputs: dict, key, step):
    """One D step (pure): softplus(−D(real)) + softplus(D(fake)) over `d_inputs` (r3p.losses.adversarial), plus
    on lazy steps ((step+1) % d_reg_interval == 0) γ·interval·R1 on the reals (w.r.t. both D inputs), clip +
    Adam, lr at the global `step`. Runs only when step ≥ start_adv − d_lead (else the D state is returned
    unchanged: no Adam moment/count update, as the official skips the D optimiser step); both gates are
    `lax.cond`, so the skipped work costs nothing at run time. -> (new disc_state, metrics 'd/…')."""
    cfg, o = self.cfg, self.cfg.optim
    c_noise = float(cfg.model.disc_c_noise)
    r1_w = float(cfg.loss.r1_gamma) * o.d_reg_interval

    def d_fn_of(dp, rest):
      d = self.disc_from(dp, rest)
      return lambda i, r, c: d(i, r, c)

    def run(ops):
      ds, inputs = ops

      def main(dp):
        return adversarial.d_main_loss(d_fn_of(dp, ds["rest"]), inputs, key, c_noise)

      def r1(dp):
        pen, terms = adversarial.d_r1_loss(d_fn_of(dp, ds["rest"]), inputs, key, c_noise)
        return r1_w * pen, (pen, terms)

      def r1_yes(dp):
        (weighted, aux), g = jax.value_and_grad(r1, has_aux=True)(dp)
        return weighted, aux, g

      def r1_no(dp):
        return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(r1_yes, dp))

      (l_main, terms), g_main = jax.value_and_grad(main, has_aux=True)(ds["params"])
      r1_on = (step + 1) % o.d_reg_interval == 0
      l_r1, (pen, r1_terms), g_r1 = jax.lax.cond(r1_on, r1_yes, r1_no, ds["params"])
      grads = jax.tree.map(jnp.add, g_main, g_r1)
      updates, opt = self.d_tx.update(grads, ds["opt"], ds["params"])
      lr = d_lr_schedule(o)(step)
      params = optax.apply_updates(ds["params"], jax.tree.map(lambda u: -lr * u, updates))
      metrics = {**{f"d/{k}": v for k, v in {**terms, **r1_terms}.items()},
                 "d/total": l_main + l_r1, "d/r1": pen, "d/grad_norm": optax.global_norm(grads),
                 "d/active": jnp.ones((), jnp.float32)}
      return {"params": params, "rest": ds["rest"], "opt": opt}, metrics

    def skip(ops):
      ds, _ = ops
      shapes = jax.eval_shape(run, ops)[1]
      return ds, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)

    active = step >= o.start_adv - o.d_lead
    new, metrics = jax.lax.cond(active, run, skip, (disc_state, d_inputs))
    metrics["lr/d"] = jnp.where(active, d_lr_schedule(o)(step), 0.0)
    return new, metrics

  def model_from(self, params, rest):
    return _merge_pure(self.graphdef, self._abs_params, self._abs_rest, params, rest)

  # ---------------------------------------------------------------- the step
  def make_step(self, batch_spec: dict[str, jax.ShapeDtypeStruct]):
    cfg, stage, mesh = self.cfg, self.stage, self.mesh
    base_key = jax.random.key(cfg.seed)

    def train_step(state, batch):
      step = state["step"]
      key = jax.random.fold_in(base_key, step)

      def loss_fn(params):
        model = self.model_from(params, state["rest"])
        if self.has_disc:  # D weights are constants of the G loss (gradients w.r.t. G params only)
          disc = self.disc_from(state["disc"]["params"], state["disc"]["rest"])
          loss, (metrics, lambdas, d_inputs) = stage.g_loss(model, cfg, batch, key, step, state["lambdas"],
                                                            disc=disc)
        else:
          loss, (metrics, lambdas) = stage.g_loss(model, cfg, batch, key, step, state["lambdas"])
          d_inputs = None
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return loss, (metrics, lambdas, nnx.to_pure_dict(rest), d_inputs)

      (loss, (metrics, lambdas, rest, d_inputs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state["params"])
      updates, opt = self.tx.update(grads, state["opt"], state["params"])
      params = optax.apply_updates(state["params"], updates)
      metrics = {f"loss/{k}": v for k, v in metrics.items()}
      metrics["loss/total"] = loss
      metrics["grad_norm"] = optax.global_norm(grads)
      metrics["param_norm"] = optax.global_norm(params)
      for g, f in lr_schedules(cfg.optim).items():
        metrics[f"lr/{g}"] = f(step)
      new = {"step": step + 1, "params": params, "rest": rest, "opt": opt, "lambdas": lambdas}
      if self.has_disc:
        # The D step after the G step, on this iteration's fakes rendered before the G update (detached).
        new["disc"], d_metrics = self.d_update(state["disc"], d_inputs,
                                               jax.random.fold_in(key, adversarial.D_STEP_SALT), step)
        metrics.update(d_metrics)
      return new, metrics

    data_sh = {k: parallel.batch_sharding(mesh, len(v.shape)) for k, v in batch_spec.items()}
    rep = NamedSharding(mesh, P())
    self.step_fn = jax.jit(train_step, in_shardings=(self.state_shardings, data_sh),
                           out_shardings=(self.state_shardings, rep), donate_argnums=0)
    self.data_shardings = data_sh
    return self.step_fn
