"""Orbax CheckpointManager wrapper (STYLE.md §9.5): train state + data-iterator state, keep-N + keep-period,
async saves, a preemption save on SIGTERM, restore into abstract *sharded* targets (any mesh shape)."""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, directory: str, *, keep: int = 3, keep_period: int = 0, save_every: int = 1000,
               async_save: bool = True):
    save_policy = ocp.checkpoint_managers.AnySavePolicy([
        ocp.checkpoint_managers.FixedIntervalPolicy(save_every),
        ocp.checkpoint_managers.PreemptionCheckpointingPolicy()])
    keepers = [ocp.checkpoint_managers.LatestN(keep)]
    if keep_period:
      keepers.append(ocp.checkpoint_managers.EveryNSteps(keep_period))
    opts = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save, save_decision_policy=save_policy,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(keepers))
    self.mngr = ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "data"), options=opts)

  def latest_step(self) -> int | None:
    return self.mngr.latest_step()

  def save(self, step: int, state, data_state: dict[str, Any], *, force: bool = False) -> bool:
    return self.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=ocp.args.JsonSave(data_state)), force=force)

  def reached_preemption(self, step: int) -> bool:
    return self.mngr.reached_preemption(step)

  def restore(self, abstract_state, step: int | None = None):
    """-> (state placed by the shardings in `abstract_state`, data_state). `abstract_state` leaves are
    jax.ShapeDtypeStruct with `sharding` (any mesh shape: Orbax reshards on read)."""
    step = self.mngr.latest_step() if step is None else step
    out = self.mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                          data=ocp.args.JsonRestore()))
    return out["state"], out["data"]

  def wait(self):
    self.mngr.wait_until_finished()

  def close(self):
    self.mngr.wait_until_finished()
    self.mngr.close()
