"""The training loop: `train(cfg, workdir)` runs one stage (pretrain, midtrain, SFT, ...).

It owns everything around the pure `train_step`: the mesh, the batch producer
(the grain pipeline by default; RL rollouts are another), the objective, step
hooks, checkpoints (Orbax, asynchronous; resume is automatic when `workdir` has
some), held-out evaluation, metrics, profiling and preemption. Workdir layout
(OVERVIEW.md): `checkpoints/`, `metrics.jsonl`, `tensorboard/`, `config.json`.

Exactness: a checkpoint holds the train state, the batch producer's state and
the RNG key, and `metrics.jsonl` is cut back to the restored step on resume,
so a run killed at any point and resumed writes the same per-step losses, bit
for bit, as one that was never interrupted (tests/train/test_loop.py).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from absl import logging

from cwm_jax.sharding import make_mesh
from cwm_jax.sharding.distributed import global_batch
from cwm_jax.sharding.partition import batch_tree_sharding, check_batch_shape
from cwm_jax.train.checkpoint import Checkpoints
from cwm_jax.train.config import ConfigError, ExperimentConfig, pipeline_config
from cwm_jax.train.evaluation import EvalHook, HeldOutLoss, held_out_batches, jit_eval_sums
from cwm_jax.train.init import initial_state
from cwm_jax.train.metrics import MetricsWriter
from cwm_jax.train.objectives import Objective
from cwm_jax.train.optimizer import make_optimizer, make_schedule
from cwm_jax.train.producers import BatchProducer, StepHook, check_producer
from cwm_jax.train.state import abstract_train_state, train_state_shardings
from cwm_jax.train.step import jit_train_step
from cwm_jax.train.throughput import Throughput


class NonFiniteLossError(RuntimeError):
  """The loss or gradient norm became NaN/inf (the state and checkpoints stay clean)."""


class _Preemption:
  """Turns SIGTERM into a flag checked between steps (then: save and exit)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no signal handling
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint at the end of this step, then exiting")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_tokenizer(cfg: ExperimentConfig) -> None:
  if not cfg.data.tokenizer_path:  # e.g. RL on token-level toy environments
    return
  from cwm_jax.tokenizer import load_tokenizer  # pylint: disable=import-outside-toplevel
  vocab = load_tokenizer(cfg.data.tokenizer_path).vocab_size
  if vocab > cfg.model.vocab_size:
    raise ConfigError(f"config.data.tokenizer_path={cfg.data.tokenizer_path!r} has {vocab} ids, "
                      f"more than config.model.vocab_size={cfg.model.vocab_size}.")


def _write_config(cfg: ExperimentConfig, workdir: str) -> None:
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    f.write(cfg.to_json())
  os.replace(path + ".tmp", path)


class _PendingMetrics:
  """Per-step metrics kept on device until the next flush, so the loop does not
  wait for every step; a flush writes one line per step and applies the NaN policy."""

  def __init__(self, cfg: ExperimentConfig, writer: MetricsWriter):
    self._cfg, self._writer = cfg, writer
    self._steps: list[tuple[int, dict]] = []
    self.nonfinite_in_a_row = 0
    self.nonfinite_total = 0

  def add(self, step: int, metrics: dict) -> None:
    self._steps.append((step, metrics))

  def flush(self, extra: Optional[dict] = None) -> None:
    """Writes pending steps; `extra` goes onto the last one's line."""
    fetched = jax.device_get([m for _, m in self._steps])
    for i, ((step, _), m) in enumerate(zip(self._steps, fetched)):
      line = {k: (v.item() if isinstance(v, np.ndarray) else v) for k, v in m.items()}
      if i == len(fetched) - 1 and extra:
        line.update(extra)
      self._writer.write(step, line)
      self._check(step, line)
    self._steps = []

  def _check(self, step: int, line: dict) -> None:
    if not line.get("nonfinite"):
      self.nonfinite_in_a_row = 0
      return
    self.nonfinite_in_a_row += 1
    self.nonfinite_total += 1
    train = self._cfg.train
    what = (f"step {step}: loss={line['loss']} grad_norm={line['grad_norm']} is not finite; "
            "the update was not applied")
    if train.nan_policy == "stop":
      raise NonFiniteLossError(f"{what}. Stopping (config.train.nan_policy='stop'); checkpoints "
                               "hold only finite states.")
    if self.nonfinite_in_a_row > train.max_nonfinite_steps:
      raise NonFiniteLossError(f"{what}, {self.nonfinite_in_a_row} steps in a row (more than "
                               f"config.train.max_nonfinite_steps={train.max_nonfinite_steps}). "
                               "Stopping; checkpoints hold only finite states.")
    logging.warning("%s; skipped (nan_policy='skip', %d in a row)", what, self.nonfinite_in_a_row)


def train(cfg: ExperimentConfig, workdir: str, *, producer: Optional[BatchProducer] = None,
          objective: Optional[Objective] = None, step_hooks: Sequence[StepHook] = (),
          eval_hooks: Sequence[EvalHook] = (), devices=None,
          on_start: Optional[Callable] = None) -> dict:
  """Runs (or resumes) the stage described by `cfg` in `workdir`; returns a summary.

  The objective and the batch producer are the ones the config names
  (`config.train.objective`, `config.data.producer`) unless given here; the
  producer's state is checkpointed with the train state, and `train` closes it.
  `step_hooks` run after every step (state, step, device metrics); `eval_hooks`
  (params, step) -> metrics run with the held-out evaluation, after the ones
  `config.train.eval_hooks` names. `devices` restricts the learner's mesh (e.g.
  RL's learner sub-mesh); `on_start(state)` runs once the state is initialised or
  restored, before the first step (e.g. to give an RL engine the weights).
  """
  from cwm_jax.train import components  # pylint: disable=import-outside-toplevel
  os.makedirs(workdir, exist_ok=True)
  _check_tokenizer(cfg)
  mesh = make_mesh(cfg.mesh, devices)
  optimizer, schedule = make_optimizer(cfg.optimizer), make_schedule(cfg.optimizer)
  shardings = train_state_shardings(mesh, cfg.model, optimizer)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_train_state(cfg.model, optimizer), shardings)
  try:
    check_batch_shape(mesh, (cfg.data.batch_size, cfg.data.seq_len))
  except ValueError as e:
    raise ConfigError(f"config.data.batch_size / seq_len do not fit config.mesh: {e}") from None
  if cfg.data.batch_size % jax.process_count():
    raise ConfigError(f"config.data.batch_size={cfg.data.batch_size} is not divisible by the "
                      f"{jax.process_count()} processes.")
  objective = objective or components.build("objective", cfg.train.objective, cfg)
  hooks = [components.build("eval_hook", name, cfg) for name in cfg.train.eval_hooks]
  hooks += list(eval_hooks)

  try:
    ckpts = Checkpoints(os.path.join(workdir, "checkpoints"), keep_last=cfg.train.keep_last,
                        keep_every=cfg.train.keep_every, async_save=cfg.train.async_checkpoint,
                        identity=cfg.identity(), model_config=cfg.model)
  except ValueError as e:  # the workdir holds another experiment's checkpoints
    if producer is not None:
      producer.close()
    raise ConfigError(f"--workdir={workdir}: {e}") from None
  _write_config(cfg, workdir)
  writer = MetricsWriter(workdir, total_steps=None)
  data = producer if producer is not None else components.build("producer", cfg.data.producer,
                                                                cfg)
  check_producer(data)
  rng = jax.random.key(cfg.seed)
  try:
    if ckpts.latest_step() is not None:
      restored = ckpts.restore(abstract)
      state, rng = restored.state, restored.rng
      data.set_state(restored.data_state)
      start = int(restored.meta["start_step"])
      writer.truncate_after(int(state.step))
      logging.info("resuming %s from %s at step %d", cfg.name, ckpts.directory, int(state.step))
    else:
      writer.truncate_after(-1)  # a fresh run: no stale lines of an earlier attempt
      state = initial_state(cfg, optimizer, mesh, shardings, abstract)
      start = int(state.step)
    end = start + cfg.train.steps
    writer.total_steps = end
    if on_start is not None:
      on_start(state)
    loop = _Loop(cfg, workdir, mesh, shardings, optimizer, schedule, objective, ckpts, writer,
                 data, hooks, list(step_hooks), start, end)
    return loop.run(state, rng)
  finally:
    data.close()
    ckpts.close()
    writer.close()


class _Loop:
  """The step loop of one `train` call (state threaded through `run`)."""

  def __init__(self, cfg, workdir, mesh, shardings, optimizer, schedule, objective, ckpts,
               writer, data, eval_hooks, step_hooks, start, end):
    self.cfg, self.workdir, self.mesh = cfg, workdir, mesh
    self.ckpts, self.writer, self.data = ckpts, writer, data
    self.step_hooks, self.start, self.end = step_hooks, start, end
    train_cfg = cfg.train
    self.step_fn = jit_train_step(mesh, cfg.model, optimizer, shardings, objective=objective,
                                  accum_steps=train_cfg.accum_steps,
                                  normaliser=train_cfg.loss_normaliser, lr_schedule=schedule,
                                  nonfinite_guard=True)
    self.eval_hooks = list(eval_hooks)
    if cfg.data.eval_sources:
      sums = jit_eval_sums(mesh, cfg.model, shardings.params, train_cfg.loss_chunk)
      # The global held-out config: each process reads its own share, once.
      self.eval_hooks.insert(0, HeldOutLoss(held_out_batches(pipeline_config(cfg, eval_split=True)),
                                            train_cfg.eval_batches, sums))

  def _save(self, state, rng, at_step):
    self.ckpts.save(at_step, state, data_state=self.data.get_state(), rng=rng,
                    meta={"start_step": self.start, "end_step": self.end,
                          "stage": self.cfg.stage})

  def _evaluate(self, params, at_step) -> dict:
    out = {}
    for hook in self.eval_hooks:
      out.update(hook(params, at_step))
    return out

  def run(self, state, rng) -> dict:
    cfg, train_cfg, data = self.cfg, self.cfg.train, self.data
    throughput = Throughput(cfg.model, processes=jax.process_count())
    pending = _PendingMetrics(cfg, self.writer)
    b_sharding = batch_tree_sharding
    step = int(state.step)
    last_eval = {}
    profiling = False
    t_log, steps_since_log = time.perf_counter(), 0
    with _Preemption() as preemption:
      while step < self.end:
        if train_cfg.profile_start >= 0 and step == train_cfg.profile_start:
          jax.profiler.start_trace(os.path.join(self.workdir, "profile"))
          profiling = True
        batch = next(data)
        throughput.add_batch(batch)
        if jax.process_count() > 1:
          batch = global_batch(batch, b_sharding(self.mesh, batch))
        state, metrics = self.step_fn(state, batch)
        step += 1
        steps_since_log += 1
        pending.add(step, {**metrics, **data.metrics()})
        for hook in self.step_hooks:
          hook(state, step, metrics)
        if profiling and step >= train_cfg.profile_start + train_cfg.profile_steps:
          jax.block_until_ready(state)
          jax.profiler.stop_trace()
          profiling = False
        last = step == self.end
        do_eval = bool(self.eval_hooks) and (
            last or (train_cfg.eval_every and step % train_cfg.eval_every == 0))
        do_log = last or step % train_cfg.log_every == 0 or do_eval or preemption.requested
        do_save = last or step % train_cfg.checkpoint_every == 0 or preemption.requested
        if do_log or do_save:
          extra = {}
          if do_log:
            jax.block_until_ready(state.step)
            now = time.perf_counter()
            extra.update(throughput.measure(steps_since_log, now - t_log))
            t_log, steps_since_log = now, 0
          if do_eval:
            last_eval = self._evaluate(state.params, step)
            extra.update(last_eval)
          pending.flush(extra)  # raises on NaN per policy, before anything is saved
          if do_log:
            t_log = time.perf_counter()  # evaluation time is not training time
        if do_save:
          self._save(state, rng, step)
        if preemption.requested and not last:
          self.ckpts.wait()
          logging.warning("preempted: checkpoint of step %d saved in %s; re-run the same "
                          "command to resume", step, self.ckpts.directory)
          return {"step": step, "preempted": True, **last_eval}
    if profiling:
      jax.profiler.stop_trace()
    self.ckpts.wait()
    return {"step": step, "preempted": False, "nonfinite_steps": pending.nonfinite_total,
            **last_eval}
