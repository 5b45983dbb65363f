"""`Checkpoints`: asynchronous, exact training checkpoints on Orbax.

    ckpts = Checkpoints(f"{workdir}/checkpoints", keep_last=3, keep_every=10_000,
                        identity={"model_config": cfg.to_dict(), "stage": "pretrain", "name": n})
    ckpts.save(step, state, data_state=it.get_state(), rng=rng)        # returns at once
    r = ckpts.restore(abstract_state_with_shardings)                   # latest readable step
    state, rng = r.state, r.rng; it.set_state(r.data_state)

One step directory holds four Orbax items, so that each can be read alone:

    <step>/params/       the model parameters (StandardSave)  <- `load_params` reads only this
    <step>/optimizer/    {"step": state.step, "opt_state": state.opt_state}
    <step>/meta/         JSON: step, rng key data, model config, process count, caller's meta
    <step>/data_state/   process_<i>.json: each process's input-iterator state

Orbax writes a step into a temporary directory and renames it when every item
is complete, so a process killed mid-save leaves no step behind (and its
temporary directory is removed before the next writable `Checkpoints` on the
directory is constructed; see `remove_dead_saves`). Retention: the `keep_last`
newest steps plus every step divisible by `keep_every`.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from cwm_jax.model.config import ModelConfig
from cwm_jax.train.checkpoint import identity as identity_lib
from cwm_jax.train.checkpoint.process_json import (ProcessJsonHandler, ProcessJsonRestore,
                                                   ProcessJsonSave)
from cwm_jax.train.state import TrainState

PARAMS, OPTIMIZER, META, DATA = "params", "optimizer", "meta", "data_state"
META_FILE = "meta.json"
FORMAT_VERSION = 1


def item_handlers() -> dict:
  return {PARAMS: ocp.StandardCheckpointHandler(), OPTIMIZER: ocp.StandardCheckpointHandler(),
          META: ocp.JsonCheckpointHandler(filename=META_FILE), DATA: ProcessJsonHandler()}


def remove_dead_saves(directory: epath.Path) -> None:
  """Deletes the temporary directories of saves that never finished (a killed
  run's), on process 0, before returning.

  Orbax's own `cleanup_tmp_directories` deletes them in a background thread
  that only `CheckpointManager.save` waits for, through a private method; a
  process that exits right after opening (load_params, an eval, a resume that
  fails its checks) would cut that deletion short. Other processes cannot write
  a step before process 0 is done: Orbax's `save` starts with a barrier.
  """
  if jax.process_index() != 0:
    return
  for tmp in ocp.path.step.all_temporary_paths(directory):
    logging.info("Removing %s, the temporary directory of a save that never finished.",
                 tmp.get())
    tmp.get().rmtree()


class Restored(NamedTuple):
  step: int
  state: TrainState
  data_state: Optional[dict]   # this process's input-iterator state, or None if none was saved
  rng: Optional[jax.Array]     # as saved: a typed key or raw uint32 key data
  meta: dict                   # the caller's `meta` of `save`


def encode_rng(rng) -> Optional[dict]:
  """A PRNG key (typed, or raw uint32 key data) as exact JSON."""
  if rng is None:
    return None
  typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
  data = jax.random.key_data(rng) if typed else rng
  if isinstance(data, jax.Array) and not data.is_fully_addressable:
    if not data.is_fully_replicated:
      raise ValueError("Checkpoints.save: rng must be replicated across processes.")
    data = data.addressable_data(0)
  data = np.asarray(data)
  if data.dtype != np.uint32:
    raise ValueError(f"Checkpoints.save: rng must be a typed PRNG key or uint32 key data; "
                     f"got dtype {data.dtype}.")
  return {"typed": bool(typed), "impl": str(jax.random.key_impl(rng)) if typed else None,
          "shape": list(data.shape), "data": data.ravel().tolist()}


def decode_rng(d: Optional[dict]) -> Optional[jax.Array]:
  if d is None:
    return None
  data = np.asarray(d["data"], np.uint32).reshape(d["shape"])
  return jax.random.wrap_key_data(data, impl=d["impl"]) if d["typed"] else jnp.asarray(data)


def _json_item(value: Any, what: str) -> Any:
  try:
    json.dumps(value, allow_nan=True)
  except (TypeError, ValueError) as e:
    raise ValueError(f"Checkpoints.save: {what} must be JSON-serialisable ({e}).") from None
  return value


def _with_default_sharding(abstract_state):
  """Leaves without a sharding go to this process's first device."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def fill(x):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
      raise TypeError(f"Checkpoints.restore: abstract_state leaves must be jax.ShapeDtypeStruct "
                      f"(or arrays); got {type(x).__name__}.")
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or device)

  return jax.tree.map(fill, abstract_state)


class TargetMismatchError(ValueError):
  """The caller's abstract state does not fit a readable checkpoint (a
  different model config or optimizer): an error, never a fallback."""


def _leaf_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _check_shapes(stored_tree, abstract_tree, item: str, step: int) -> None:
  """Names the first leaf whose shape differs between checkpoint and target."""
  stored = {_leaf_name(p): tuple(m.shape) for p, m in jax.tree_util.tree_flatten_with_path(stored_tree)[0]}
  target = {_leaf_name(p): tuple(a.shape) for p, a in jax.tree_util.tree_flatten_with_path(abstract_tree)[0]}
  if set(stored) != set(target):
    raise TargetMismatchError(
        f"Checkpoints.restore: step {step}'s {item} has leaves {sorted(set(stored) - set(target))[:5]} "
        f"that the target state lacks, and lacks {sorted(set(target) - set(stored))[:5]} "
        "(a different model config or optimizer?).")
  for name, shape in target.items():
    if stored[name] != shape:
      raise TargetMismatchError(
          f"Checkpoints.restore: {item} leaf {name!r} has shape {stored[name]} in step {step} "
          f"but the target state expects {shape} (a different model config?).")


class Checkpoints:
  """Saves and restores `TrainState` + input-iterator state + RNG of one run.

  Every process calls every method (Orbax synchronises them). `save` waits
  for the previous save to finish, then returns once the arrays are copied
  to host; writing continues in the background (`async_save=True`).
  """

  def __init__(self, directory: str, *, keep_last: Optional[int] = 3,
               keep_every: Optional[int] = None, async_save: bool = True,
               identity: Optional[dict] = None,
               model_config: Union[ModelConfig, dict, None] = None, read_only: bool = False):
    for name, value in (("keep_last", keep_last), ("keep_every", keep_every)):
      if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"Checkpoints: {name}={value!r}, expected a positive integer or None.")
    self.directory = epath.Path(directory)
    if model_config is None and identity is not None and "model_config" in identity:
      model_config = identity["model_config"]
    if isinstance(model_config, dict):
      model_config = ModelConfig.from_dict(model_config)
    self._model_config = None if model_config is None else model_config.to_dict()
    policies = [preservation.LatestN(keep_last)]
    if keep_every is not None:
      policies.append(preservation.EveryNSteps(keep_every))
    # read_only (another run's directory, e.g. init_from): no temp-dir cleanup
    # (that run may be saving right now), no identity written, no saves.
    self.read_only = read_only
    if not read_only:
      remove_dead_saves(self.directory)
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save, cleanup_tmp_directories=False,
        read_only=read_only, create=not read_only,
        preservation_policy=preservation.AnyPreservationPolicy(policies))
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=item_handlers())
    if not read_only:
      identity_lib.check_and_store(self.directory, identity, bool(self.all_steps()))
    self._unreadable: set[int] = set()   # steps that failed to restore in this session

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: TrainState, *, data_state: Optional[dict],
           rng: Optional[jax.Array], meta: Optional[dict] = None, force: bool = False) -> bool:
    """Starts saving `step`; False if skipped because the directory already
    holds this step or a later one (e.g. the loop reaches the step it resumed
    from). `force=True` deletes those later steps first, to branch from an
    older step; steps that failed to restore in this session are deleted
    without it. When to save is the caller's decision."""
    if self.read_only:
      raise ValueError(f"Checkpoints.save: {self.directory} was opened with read_only=True.")
    step = int(step)
    if step < 0:
      raise ValueError(f"Checkpoints.save: step={step}, expected >= 0.")
    later = [s for s in self.all_steps() if s >= step]
    if later and not force and not set(later) <= self._unreadable:
      logging.info("Checkpoint step %d not saved: %s already holds step(s) %s.", step,
                   self.directory, later)
      return False
    if later:
      self.wait()  # never delete a step that is still being written
    for s in later:
      logging.warning("Deleting checkpoint step %d in %s before saving step %d (%s).", s,
                      self.directory, step, "unreadable" if s in self._unreadable else "force=True")
      self._manager.delete(s)
    meta_item = {"format": FORMAT_VERSION, "step": step, "rng": encode_rng(rng),
                 "model_config": self._model_config, "process_count": jax.process_count(),
                 "has_data_state": data_state is not None,
                 "meta": _json_item(meta or {}, "meta")}
    items = {PARAMS: ocp.args.StandardSave(state.params),
             OPTIMIZER: ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
             META: ocp.args.JsonSave(meta_item)}
    if data_state is not None:
      items[DATA] = ProcessJsonSave(_json_item(data_state, "data_state"))
    return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state: TrainState, step: Optional[int] = None) -> Restored:
    """The state of `step` (default: the newest step that restores), each leaf
    placed with the sharding of `abstract_state`'s leaf (ShapeDtypeStructs;
    leaves without one go to the first local device). An unreadable newest
    step is logged and skipped in favour of the one before it."""
    self.wait()
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f"Checkpoints.restore: no step {step} in {self.directory}; "
                                f"it holds steps {steps}.")
      return self._restore_step(abstract_state, step)
    if not steps:
      raise FileNotFoundError(f"Checkpoints.restore: {self.directory} holds no checkpoints.")
    errors = []
    for i, s in enumerate(reversed(steps)):
      try:
        return self._restore_step(abstract_state, s)
      except TargetMismatchError:
        raise
      except Exception as e:  # orbax / tensorstore raise many types for damaged files
        self._unreadable.add(s)
        errors.append(f"step {s}: {type(e).__name__}: {e}")
        fallback = steps[-2 - i] if i + 1 < len(steps) else None
        logging.warning("Checkpoint step %d in %s is unreadable (%s: %s); %s.", s, self.directory,
                        type(e).__name__, e,
                        f"falling back to step {fallback}" if fallback is not None
                        else "no older step to fall back to")
    raise ValueError(f"Checkpoints.restore: no checkpoint in {self.directory} could be restored: "
                     + " | ".join(errors))

  def _restore_step(self, abstract_state: TrainState, step: int) -> Restored:
    meta = self._manager.restore(step, args=ocp.args.Composite(
        **{META: ocp.args.JsonRestore()}))[META]
    if meta.get("format") != FORMAT_VERSION or meta.get("step") != step:
      raise ValueError(f"{META}/{META_FILE} of step {step} is not a format-{FORMAT_VERSION} "
                       f"record of that step (found format {meta.get('format')}, step {meta.get('step')}).")
    abstract = _with_default_sharding(abstract_state)
    target_opt = {"step": abstract.step, "opt_state": abstract.opt_state}
    stored = self._manager.item_metadata(step)
    for item, target in ((PARAMS, abstract.params), (OPTIMIZER, target_opt)):
      if stored[item] is None:
        raise FileNotFoundError(f"step {step} has no readable {item} item")
      _check_shapes(stored[item], target, item, step)
    items = {PARAMS: ocp.args.StandardRestore(abstract.params),
             OPTIMIZER: ocp.args.StandardRestore(target_opt)}
    if meta["has_data_state"]:
      items[DATA] = ProcessJsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    state = TrainState(step=restored[OPTIMIZER]["step"], params=restored[PARAMS],
                       opt_state=restored[OPTIMIZER]["opt_state"])
    data_state = restored[DATA] if meta["has_data_state"] else None
    return Restored(step=step, state=state, data_state=data_state, rng=decode_rng(meta["rng"]),
                    meta=meta["meta"])

  def stored_model_config(self, step: Optional[int] = None) -> Optional[ModelConfig]:
    """The model config recorded with `step` (default: the latest), if any."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    meta = self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
    return None if meta.get("model_config") is None else ModelConfig.from_dict(meta["model_config"])

  def wait(self) -> None:
    """Blocks until the save in flight (if any) is written and committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for the save in flight, then releases Orbax's threads."""
    self._manager.close()

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

