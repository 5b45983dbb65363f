"""`RolloutProducer`: RL's batch producer for the training loop (`train(..., producer=)`).

Generation happens in rounds: round r is `groups_per_step` groups of G episodes, its
group k having the global index r * groups_per_step + k (which fixes its randomness),
and the learner's batch for step r + 1 is made from round r's trajectories:

  filter      stale (oldest token > max_staleness steps behind) and gibberish
              trajectories are dropped and counted (filters.py)
  advantages  per group, length-weighted baseline (advantages.py); groups whose
              advantages are all zero are skipped and counted
  pack        into the learner's [B, T] rows, balanced over its data shards
              (batching.py); what does not fit waits for the next batch

Modes:
  sync   `next()` runs round r on the engine with the weights of step r, then returns
         its batch: the engine and the learner take turns (colocated).
  async  an actor thread runs the engine continuously on its own sub-mesh; round r
         starts once the learner has taken step r - max_lag (back-pressure), and
         finished rounds wait in a queue for the learner. New weights reach the
         engine after every learner step (`step_hook`), between decode steps of
         running episodes. With max_lag 0 this is exactly the sync run.

The solve-rate filter decides round r's tasks from the outcomes of rounds up to
r - max_lag - 1 only, so its decisions do not depend on timing. The checkpointed
state is the task mixture as it was when round r began (r: the next round the
learner consumes), the outcomes not yet applied and the leftover trajectories:
resuming regenerates the rounds that were in flight (their episodes are discarded
and counted) and continues exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import queue
import threading
import time
from typing import Any, Optional

import jax
import numpy as np
from absl import logging

from cwm_jax.rl.advantages import advantages_by_group
from cwm_jax.rl.batching import pack_trajectories
from cwm_jax.rl.engine import EngineStats, GroupRequest, RolloutEngine
from cwm_jax.rl.filters import FilterConfig, filter_trajectories
from cwm_jax.rl.mixture import TaskMixture
from cwm_jax.rl.trajectory import Trajectory

ARRAY_KEYS = ("tokens", "segment_ids", "positions", "loss_mask", "advantages",
              "behaviour_logprobs", "seq_weight")


@dataclasses.dataclass(frozen=True)
class ProducerConfig:
  group_size: int
  groups_per_step: int
  rows: int
  seq_len: int
  shards: int = 1
  mode: str = "sync"
  max_lag: int = 0
  std_advantages: bool = False
  filters: FilterConfig = FilterConfig()
  vocab_size: int = 0
  sample_every: int = 0
  samples_dir: str = ""


class RolloutProducer:
  """See the module docstring. `envs` maps an environment name to (env, reward_fn)."""

  def __init__(self, config: ProducerConfig, engine: RolloutEngine, envs: dict,
               mixture: TaskMixture, *, ref_scorer=None, tokenizer=None):
    self.config, self.engine, self.envs, self.mixture = config, engine, envs, mixture
    self.ref_scorer, self.tokenizer = ref_scorer, tokenizer
    self.round = 0                       # the next round the learner consumes
    self.learner_step = 0
    self.leftover: list[Trajectory] = []
    self.outcomes: dict[int, list] = {}  # round -> [(task id, success)], not yet applied
    self._applied_through = -1           # outcomes of rounds <= this are in the mixture
    self._snapshots: dict[int, dict] = {}
    self._metrics: dict = {}
    self._lock = threading.Lock()
    self._stats_seen = EngineStats()
    self._t_last = time.perf_counter()
    # async
    self._queue: queue.Queue = queue.Queue()
    self._thread: Optional[threading.Thread] = None
    self._stopping = False
    self._step_cond = threading.Condition()
    self._error: Optional[BaseException] = None
    self._engine_stats = EngineStats()

  # ---------------------------------------------------------------- learner side hooks

  def on_start(self, state) -> None:
    """The learner's initial (or restored) state: the engine gets its weights."""
    self.learner_step = int(state.step)
    self.engine.update_weights(state.params, self.learner_step)
    if self.config.mode == "async" and self._thread is None:
      self._thread = threading.Thread(target=self._actor, name="cwm-rl-actor", daemon=True)
      self._thread.start()

  def step_hook(self, state, step: int, metrics: dict) -> None:
    """After each learner step: push the new weights (JAX resharding onto the
    engine's devices) and let the actor start rounds the new step allows."""
    del metrics
    self.engine.update_weights(state.params, step)
    with self._step_cond:
      self.learner_step = step
      self._step_cond.notify_all()

  # ---------------------------------------------------------------- rounds

  def _apply_outcomes(self, through: int) -> None:
    for r in sorted(k for k in self.outcomes if self._applied_through < k <= through):
      for task_id, success in self.outcomes[r]:
        self.mixture.record(task_id, success)
    self._applied_through = max(self._applied_through, through)

  def _prune(self) -> None:
    """Forgets outcomes that the mixture state of round `self.round` already holds."""
    done = min(self._applied_through, self.round - self.config.max_lag - 1)
    self.outcomes = {k: v for k, v in self.outcomes.items() if k > done}
    self._snapshots = {k: v for k, v in self._snapshots.items() if k >= self.round}

  def _round_requests(self, r: int) -> list[GroupRequest]:
    """Round r's groups: the solve-rate filter sees rounds <= r - max_lag - 1."""
    with self._lock:
      self._apply_outcomes(r - self.config.max_lag - 1)
      self._snapshots[r] = json.loads(json.dumps(self.mixture.get_state()))
      reqs = []
      for k in range(self.config.groups_per_step):
        name, task = next(self.mixture)
        env, reward_fn = self.envs[name]
        index = r * self.config.groups_per_step + k
        reqs.append(GroupRequest(task, env, reward_fn, self.config.group_size, f"{r}:{k}", index))
      return reqs

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    t0 = time.perf_counter()
    if self.config.mode == "sync":
      trajs, stats = self.engine.run(self._round_requests(self.round))
      self._add_stats(stats)
    else:
      trajs = self._next_async()
    waited = time.perf_counter() - t0
    return self._batch(trajs, waited)

  def _add_stats(self, stats: EngineStats) -> None:
    s = self._engine_stats
    for f in ("episodes", "generated_tokens", "env_tokens", "prefills", "decode_steps",
              "extensions", "recomputes"):
      setattr(s, f, getattr(s, f) + getattr(stats, f))
    s.seconds += stats.seconds
    s.env_seconds += stats.env_seconds
    s.dropped.update(stats.dropped)
    s.finishes.update(stats.finishes)

  # ---------------------------------------------------------------- async actor

  def _actor(self) -> None:
    rounds: dict[int, dict] = collections.defaultdict(dict)
    per = self.config.groups_per_step
    next_round = [self.round]

    def stream():
      while not self._stopping:
        r = next_round[0]
        with self._step_cond:
          allowed = self.learner_step >= r - self.config.max_lag
        if not allowed:
          yield None
          continue
        next_round[0] += 1
        yield from self._round_requests(r)

    def on_group(req, trajs):
      r = req.index // per
      rounds[r][req.index] = trajs
      if len(rounds[r]) == per:
        done = rounds.pop(r)
        self._queue.put((r, [t for i in sorted(done) for t in done[i]]))

    try:
      self.engine.run(stream(), on_group=on_group, stop=lambda: self._stopping)
    except BaseException as e:  # pylint: disable=broad-except
      self._error = e
      self._queue.put(None)

  def _next_async(self) -> list[Trajectory]:
    while True:
      try:
        item = self._queue.get(timeout=1.0)
      except queue.Empty:
        if self._thread is None or not self._thread.is_alive():
          raise RuntimeError("the RL actor thread stopped without producing a round") from \
              self._error
        continue
      if item is None:
        raise RuntimeError("the RL actor thread failed") from self._error
      r, trajs = item
      if r != self.round:
        raise RuntimeError(f"RL actor: round {r} arrived, round {self.round} was expected")
      return trajs

  # ---------------------------------------------------------------- batches

  def _batch(self, new: list[Trajectory], waited: float) -> dict:
    cfg = self.config
    r = self.round
    self.round += 1
    with self._lock:
      self.outcomes[r] = [(t.task_id, bool(t.outcome.get("success"))) for t in new]
      self._prune()
    kept, dropped = filter_trajectories(new, self.learner_step, cfg.vocab_size, cfg.filters)
    advs, zero = advantages_by_group(kept, std_normalise=cfg.std_advantages)
    position = collections.defaultdict(int)  # member order within each group of `kept`
    fresh = []
    for t in kept:
      k = position[t.group_id]
      position[t.group_id] += 1
      if t.group_id not in zero:
        t.advantage = float(advs[t.group_id][k])
        fresh.append(t)
    stale_left, _ = filter_trajectories(self.leftover, self.learner_step, cfg.vocab_size,
                                        cfg.filters)
    dropped["stale_leftover"] = len(self.leftover) - len(stale_left)
    packed = pack_trajectories(stale_left + fresh, rows=cfg.rows, seq_len=cfg.seq_len,
                               shards=cfg.shards)
    self.leftover = packed.leftover
    batch = {k: packed.arrays[k] for k in ARRAY_KEYS}
    if self.ref_scorer is not None:
      batch["ref_logprobs"] = self.ref_scorer(batch)
    self._metrics = self._round_metrics(new, packed, dropped, zero, waited)
    self._write_samples(r, new)
    return batch

  def _round_metrics(self, new, packed, dropped, zero, waited) -> dict:
    now = time.perf_counter()
    m: dict[str, Any] = {}
    if new:
      m["reward_mean"] = float(np.mean([t.reward for t in new]))
      m["pass_rate"] = float(np.mean([bool(t.outcome.get("success")) for t in new]))
      m["response_tokens_mean"] = float(np.mean([t.n_agent for t in new]))
      m["episode_tokens_mean"] = float(np.mean([len(t) for t in new]))
    for env in sorted({t.env_id for t in new}):
      mine = [t for t in new if t.env_id == env]
      m[f"reward_mean/{env}"] = float(np.mean([t.reward for t in mine]))
      m[f"pass_rate/{env}"] = float(np.mean([bool(t.outcome.get("success")) for t in mine]))
    versions = [v for t in packed.trajectories for v in t.versions[t.agent_mask]]
    if versions:
      lag = self.learner_step - np.asarray(versions)
      m["staleness_mean"], m["staleness_max"] = float(lag.mean()), int(lag.max())
    m["trajectories"] = len(new)
    m["packed_trajectories"] = len(packed.trajectories)
    m["packed_tokens"] = int(sum(len(t) for t in packed.trajectories))
    m["leftover_trajectories"] = len(packed.leftover)
    m["zero_advantage_groups"] = len(zero)
    for k, v in dropped.items():
      m[f"filtered/{k}"] = int(v)
    for k, v in self.mixture.skipped.items():
      m[f"filtered/{k}"] = int(v)
    stats = self._live_engine_stats()
    seen = self._stats_seen
    gen = stats.generated_tokens - seen.generated_tokens
    m["engine_tokens_per_s"] = gen / max(now - self._t_last, 1e-9)
    m["engine_generated_tokens"] = gen
    for k, v in stats.dropped.items():
      m[f"dropped/{k}"] = int(v)  # cumulative: in-flight episodes discarded, env errors...
    m["time/wait_s"] = waited
    m["time/between_batches_s"] = now - self._t_last
    self._stats_seen = dataclasses.replace(stats, dropped=collections.Counter(stats.dropped),
                                           finishes=collections.Counter(stats.finishes))
    self._t_last = now
    return m

  def _live_engine_stats(self) -> EngineStats:
    return self._engine_stats if self.config.mode == "sync" else self.engine.live_stats()

  def _write_samples(self, r: int, new: list[Trajectory]) -> None:
    cfg = self.config
    if not cfg.sample_every or r % cfg.sample_every or not cfg.samples_dir or \
        jax.process_index() != 0:
      return
    os.makedirs(cfg.samples_dir, exist_ok=True)
    with open(os.path.join(cfg.samples_dir, f"round_{r:06d}.jsonl"), "w") as f:
      for t in new[:8]:
        record = t.to_json()
        if self.tokenizer is not None:
          record["text"] = self.tokenizer.decode([i for i in t.tokens.tolist()
                                                  if i < self.tokenizer.vocab_size])
        f.write(json.dumps(record) + "\n")

  # ---------------------------------------------------------------- producer protocol

  def metrics(self) -> dict:
    return dict(self._metrics)

  def get_state(self) -> dict:
    with self._lock:
      snapshot = self._snapshots.get(self.round)
      if snapshot is None:  # round `self.round` has not started: the mixture is there now
        snapshot = self.mixture.get_state()
      return {"round": self.round, "mixture": snapshot,
              "applied_through": min(self._applied_through, self.round - self.config.max_lag - 1),
              "outcomes": {str(k): v for k, v in self.outcomes.items()},
              "leftover": [t.to_json() for t in self.leftover]}

  def set_state(self, state: dict) -> None:
    with self._lock:
      self.round = state["round"]
      self.mixture.set_state(state["mixture"])
      self._applied_through = state["applied_through"]
      self.outcomes = {int(k): [tuple(x) for x in v] for k, v in state["outcomes"].items()}
      self.leftover = [_trajectory(d) for d in state["leftover"]]

  def close(self) -> None:
    self._stopping = True
    with self._step_cond:
      self._step_cond.notify_all()
    if self._thread is not None:
      self._thread.join(timeout=60)
      discarded = self.engine.live_stats().dropped.get("interrupted", 0)
      if discarded:
        logging.info("RL actor stopped: %d in-flight episodes discarded (rounds after %d are "
                     "generated again on resume)", discarded, self.round - 1)
    self.engine.close()


def _trajectory(d: dict) -> Trajectory:
  t = Trajectory(np.asarray(d["tokens"]), np.asarray(d["sources"]), np.asarray(d["logprobs"]),
                 np.asarray(d["versions"]), d["reward"], d["task_id"], d["env_id"], d["group_id"],
                 finish=d["finish"], outcome=d["outcome"], info=d.get("info", {}))
  t.advantage = d.get("advantage")
  return t
