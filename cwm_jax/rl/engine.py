"""`RolloutEngine`: continuous-batching generation of multi-turn episodes.

    engine = RolloutEngine(model_cfg, params, config, tokenizer=tok)
    trajectories, stats = engine.run(groups)       # groups: [(task, env, reward_fn, G), ...]
    engine.update_weights(new_params, version)      # any time, from any thread

The engine holds one KV cache of `slots` rows. Each slot runs one episode:
  - a group's G samples share one prefill: the prompt is prefilled once (batch 1)
    and its cache row copied into a slot for each member as slots free up; each
    member draws its own first token from the shared logits;
  - every engine step decodes one token for all generating slots at once; a slot
    whose episode ends is refilled with the next member at the next step;
  - an agent turn ends at a stop token, a stop string or `max_turn_tokens`; the
    environment's `step` runs on a thread pool (so slow sandboxed steps never stall
    decoding), with a wall-clock timeout;
  - a multi-turn observation is fed with `decode.extend` (the prefix is never
    recomputed), the turn's last token first, then the observation tokens;
  - weights are swapped in between steps (`update_weights`), and the live caches
    recomputed with them (`recompute_on_swap`); every sampled token records the
    version that drew it and its behaviour log-prob (after temperature, top-k, top-p).

Episodes end when the environment says done, at `max_episode_tokens` (finish
"length", scored by the reward function as a failure), on an environment timeout
or error (dropped and counted), or when the reward function raises (dropped and
counted). Randomness is per episode: member m of group g draws with
fold_in(fold_in(seed key, g), m) folded with its token count, so an episode's tokens
do not depend on which slot it ran in or what ran beside it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding

from cwm_jax.inference.decode import extend, prefill
from cwm_jax.inference.sampler import batch_shards, bucket
from cwm_jax.inference.sampling import SamplingConfig, sample_tokens
from cwm_jax.inference.stopping import StopCriteria
from cwm_jax.model.config import ModelConfig
from cwm_jax.model.kv_cache import KVCache, init_cache
from cwm_jax.model.params import abstract_params, check_params
from cwm_jax.rl.envs.base import EnvError, StepResult, Task
from cwm_jax.rl.trajectory import AGENT, ENV, PROMPT, Trajectory
from cwm_jax.sharding.partition import param_shardings
from cwm_jax.sharding.rules import logical_to_spec


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  slots: int = 16
  max_episode_tokens: int = 512     # the KV cache length; no episode is longer
  max_turn_tokens: int = 256        # an agent turn longer than this ends (and is judged)
  sampling: SamplingConfig = SamplingConfig(temperature=1.0)
  stop_token_ids: tuple[int, ...] = ()
  min_prompt_bucket: int = 16
  env_workers: int = 4
  env_timeout_s: float = 60.0
  seed: int = 0
  # After a weight swap, recompute the live episodes' caches with the new weights,
  # so every token is drawn from one version's distribution over its whole prefix
  # (the learner reproduces its log-prob exactly). False: keep the old keys and
  # values (PipelineRL-style; cheaper, the mismatch shows in `logprob_mismatch`).
  recompute_on_swap: bool = True

  def __post_init__(self):
    if self.slots < 1 or self.max_episode_tokens < 2 or self.max_turn_tokens < 1:
      raise ValueError(f"EngineConfig: slots={self.slots}, max_episode_tokens="
                       f"{self.max_episode_tokens}, max_turn_tokens={self.max_turn_tokens}: "
                       "expected >= 1, >= 2, >= 1.")


@dataclasses.dataclass
class GroupRequest:
  """G episodes of one task: `env.start(task)` each, scored by `reward_fn`."""
  task: Task
  env: Any
  reward_fn: Callable[[dict], float]
  size: int
  group_id: str
  index: int   # position in the stream (decides the randomness)


@dataclasses.dataclass
class EngineStats:
  episodes: int = 0
  generated_tokens: int = 0
  env_tokens: int = 0
  prefills: int = 0
  decode_steps: int = 0
  extensions: int = 0
  recomputes: int = 0
  seconds: float = 0.0
  env_seconds: float = 0.0
  dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  finishes: collections.Counter = dataclasses.field(default_factory=collections.Counter)


# ---------------------------------------------------------------- jitted pieces


def _episode_keys(seed_key, groups_B, members_B):
  fold = jax.vmap(jax.random.fold_in)
  return fold(fold(jax.vmap(lambda _: seed_key)(groups_B), groups_B), members_B)


def _sample(logits_BV, seed_key, groups_B, members_B, counters_B, knobs, greedy, filtered):
  keys_B = jax.vmap(jax.random.fold_in)(_episode_keys(seed_key, groups_B, members_B), counters_B)
  return sample_tokens(logits_BV, keys_B, 0, *knobs, greedy=greedy, filtered=filtered)


@functools.partial(jax.jit, static_argnames=("cfg", "cache_len"))
def _prefill_one(params, tokens_1T, length_1, *, cfg, cache_len):
  return prefill(params, tokens_1T, length_1, cfg, cache_len)


@functools.partial(jax.jit, static_argnames=("cfg", "cache_len"))
def _prefill_all(params, tokens_BT, lengths_B, *, cfg, cache_len):
  return prefill(params, tokens_BT, lengths_B, cfg, cache_len)


@functools.partial(jax.jit, donate_argnames=("cache",))
def _insert(cache: KVCache, row: KVCache, slot):
  """The cache with batch row `slot` replaced by `row` (a batch-1 cache)."""
  put = lambda a, r: jax.lax.dynamic_update_slice_in_dim(a, r.astype(a.dtype), slot, axis=1)
  return KVCache(*(put(a, r) for a, r in zip(cache[:4], row[:4])),
                 jax.lax.dynamic_update_slice_in_dim(cache.positions, row.positions, slot, 0))


@functools.partial(jax.jit, static_argnames=("greedy", "filtered"))
def _sample_rows(logits_BV, seed_key, groups_B, members_B, counters_B, knobs, *, greedy, filtered):
  return _sample(logits_BV, seed_key, groups_B, members_B, counters_B, knobs, greedy, filtered)


@functools.partial(jax.jit, static_argnames=("cfg", "greedy", "filtered"), donate_argnames=("cache",))
def _extend_and_sample(params, cache, tokens_BT, steps_B2, seed_key, episodes_B2, knobs, *, cfg,
                       greedy, filtered):
  """steps_B2: (tokens fed, agent tokens so far) per row; episodes_B2: (group, member)."""
  logits_BV, cache = extend(params, cache, tokens_BT, steps_B2[:, 0], cfg)
  return cache, *_sample(logits_BV, seed_key, episodes_B2[:, 0], episodes_B2[:, 1],
                         steps_B2[:, 1], knobs, greedy, filtered)


# ---------------------------------------------------------------- per-slot state


@dataclasses.dataclass
class _Episode:
  request: GroupRequest
  member: int
  env_episode: Any
  tokens: list = dataclasses.field(default_factory=list)
  sources: list = dataclasses.field(default_factory=list)
  logprobs: list = dataclasses.field(default_factory=list)
  versions: list = dataclasses.field(default_factory=list)
  turn_start: int = 0
  fed: int = 0              # tokens in the cache
  generated: int = 0        # agent tokens so far (folded into the sampling key)
  checked_chars: int = 0
  pending: Optional[int] = None   # sampled, not yet in the cache
  criteria: Any = None            # the turn's StopCriteria (built once per episode)
  future: Any = None
  submitted: float = 0.0
  outcome: dict = dataclasses.field(default_factory=dict)

  def add(self, ids, source, logprobs=None, version=-1):
    self.tokens += [int(i) for i in ids]
    self.sources += [source] * len(ids)
    self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)
    self.versions += [version] * len(ids)


@dataclasses.dataclass
class _Group:
  request: GroupRequest
  prompt: list
  env_episodes: list
  row: Optional[KVCache] = None
  logits: Any = None
  version: int = 0
  admitted: int = 0


class RolloutEngine:
  """See the module docstring."""

  def __init__(self, model_cfg: ModelConfig, params: Optional[dict], config: EngineConfig, *,
               tokenizer=None, version: int = 0, mesh: Optional[Mesh] = None):
    """`params` None: the weights come with the first `update_weights`."""
    if config.max_episode_tokens > model_cfg.max_seq_len:
      raise ValueError(f"EngineConfig.max_episode_tokens={config.max_episode_tokens} exceeds the "
                       f"model's max_seq_len={model_cfg.max_seq_len}.")
    self.cfg, self.config, self.tokenizer, self.mesh = model_cfg, config, tokenizer, mesh
    self._lock = threading.Lock()
    if mesh is None:
      one = SingleDeviceSharding(jax.devices()[0])
      self._param_sh = jax.tree.map(lambda _: one, abstract_params(model_cfg))
    else:
      shards = batch_shards(mesh)
      if config.slots % shards:
        raise ValueError(f"EngineConfig.slots={config.slots} is not divisible by the engine "
                         f"mesh's {shards} batch shards.")
      self._param_sh = param_shardings(mesh, model_cfg)
    self.params, self.version = None, version
    if params is not None:
      self.update_weights(params, version)
    self._seed_key = jax.random.key(config.seed)
    s = config.sampling
    self._knobs = (jnp.float32(max(s.temperature, 1e-6)), jnp.int32(s.top_k),
                   jnp.float32(s.top_p))
    self._static = dict(greedy=s.greedy, filtered=s.filtered)
    self._pool = concurrent.futures.ThreadPoolExecutor(config.env_workers,
                                                       thread_name_prefix="cwm-rl-env")

  def close(self):
    self._pool.shutdown(wait=False, cancel_futures=True)

  def live_stats(self) -> EngineStats:
    """The statistics of the run in progress (or the last one)."""
    return getattr(self, "_live", None) or EngineStats()

  def _context(self):
    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  def _put(self, x, axes):
    """A host array placed for the engine (split over the batch on a mesh)."""
    if self.mesh is None:
      return jax.device_put(x, jax.devices()[0])
    return jax.device_put(x, NamedSharding(self.mesh, logical_to_spec(axes, self.mesh)))

  # ---------------------------------------------------------------- weights

  def update_weights(self, params: dict, version: int) -> None:
    """New weights (copied: the caller may donate its arrays) for the next step."""
    check_params(self.cfg, params)
    placed = jax.device_put(params, self._param_sh, may_alias=False)
    with self._lock:
      self.params, self.version = placed, int(version)

  def weights(self) -> tuple[dict, int]:
    with self._lock:
      return self.params, self.version

  # ---------------------------------------------------------------- running

  def run(self, requests, *, on_step: Optional[Callable[[], None]] = None,
          on_group: Optional[Callable[[GroupRequest, list[Trajectory]], None]] = None,
          stop: Optional[Callable[[], bool]] = None) -> tuple[list[Trajectory], EngineStats]:
    """Runs every episode of `requests` to its end.

    `requests` is an iterable of GroupRequest consumed as slots free up; it may
    yield None for "nothing to start now" (the engine keeps decoding and asks again).
    Returns the finished trajectories (in request order, members in order) and
    statistics. `on_group(request, trajectories)` is called as soon as every member
    of a group has ended (with the kept ones, in member order); `on_step()` before
    each engine step (e.g. to swap weights); when `stop()` is True the engine stops
    admitting and discards the episodes in flight (counted as dropped "interrupted").
    """
    if self.params is None:
      raise ValueError("RolloutEngine.run: no weights yet; call update_weights first.")
    run = _Run(self, iter(requests), on_group, stop)
    self._live = run.stats
    with self._context():
      while run.step(on_step):
        pass
    run.stats.seconds = time.perf_counter() - run.t0
    out = [run.finished[(r.index, m)] for r in run.order for m in range(r.size)
           if (r.index, m) in run.finished]
    return out, run.stats


_DROPPED = ("env_timeout", "env_error", "interrupted", "reward_error", "prompt_too_long")


class _Run:
  """The state of one `RolloutEngine.run`: slots, groups, the cache, statistics."""

  def __init__(self, engine: RolloutEngine, requests, on_group, stop):
    self.e, self.requests, self.on_group, self.stop = engine, requests, on_group, stop
    config = engine.config
    self.S, self.L = config.slots, config.max_episode_tokens
    self.stats = EngineStats()
    self.t0 = time.perf_counter()
    self.queue: collections.deque[_Group] = collections.deque()
    self.exhausted = False
    self.slots: list[Optional[_Episode]] = [None] * self.S
    self.waiting: set[int] = set()              # slots whose environment step runs
    self.to_extend: dict[int, list[int]] = {}   # slot -> last agent token + observation
    self.finished: dict[tuple[int, int], Trajectory] = {}
    self.ended: collections.Counter = collections.Counter()  # group index -> members ended
    self.order: list[GroupRequest] = []
    with engine._context():  # pylint: disable=protected-access
      self.cache = jax.jit(lambda: init_cache(engine.cfg, self.S, self.L))()
    self.episodes_B2 = np.zeros((self.S, 2), np.int32)  # (group index, member) per slot
    self._episodes_device = None
    self.version = engine.weights()[1]  # of the keys and values in the cache

  # ---------------------------------------------------------------- episode ends

  def finish(self, slot: int, reason: str, outcome: Optional[dict] = None,
             dropped_as: Optional[str] = None):
    ep = self.slots[slot]
    self.slots[slot] = None
    self.to_extend.pop(slot, None)
    self.waiting.discard(slot)
    self.stats.finishes[reason] += 1
    r = ep.request
    if reason in _DROPPED:
      self.stats.dropped[dropped_as or reason] += 1
    else:
      outcome = dict(outcome or {}, finish=reason)
      try:
        reward = float(r.reward_fn(outcome))
      except Exception:  # pylint: disable=broad-except
        self.stats.dropped["reward_error"] += 1
      else:
        self.finished[(r.index, ep.member)] = Trajectory(
            np.asarray(ep.tokens), np.asarray(ep.sources), np.asarray(ep.logprobs, np.float32),
            np.asarray(ep.versions), reward, r.task.id, r.task.env, r.group_id, finish=reason,
            outcome=outcome)
        self.stats.episodes += 1
    self._ended(r)

  def _ended(self, r: GroupRequest, members: int = 1):
    self.ended[r.index] += members
    if self.ended[r.index] == r.size and self.on_group is not None:
      self.on_group(r, [self.finished[(r.index, m)] for m in range(r.size)
                        if (r.index, m) in self.finished])

  # ---------------------------------------------------------------- tokens

  def record(self, slot: int, token: int, logprob: float, version: int):
    """A sampled agent token: appended; then the turn ends or it is pending."""
    config, ep = self.e.config, self.slots[slot]
    ep.add([token], AGENT, [logprob], version)
    ep.generated += 1
    self.stats.generated_tokens += 1
    if ep.criteria is None:
      env = ep.request.env
      ep.criteria = StopCriteria(config.max_turn_tokens, config.stop_token_ids +
                                 tuple(getattr(env, "stop_token_ids", ())),
                                 tuple(getattr(env, "stop_strings", ())), self.e.tokenizer)
    reason, ep.checked_chars = ep.criteria.check(ep.tokens[ep.turn_start:], ep.checked_chars)
    if reason is None and len(ep.tokens) >= self.L:
      self.finish(slot, "length", {"success": False})
      return
    if reason is None:
      ep.pending = token
      return
    ep.pending = None
    ep.submitted = time.perf_counter()
    ep.future = self.e._pool.submit(ep.env_episode.step, ep.tokens[ep.turn_start:])  # pylint: disable=protected-access
    self.waiting.add(slot)

  def collect(self):
    """Environment steps that finished: end the episode or queue its observation."""
    now = time.perf_counter()
    for slot in sorted(self.waiting):
      ep = self.slots[slot]
      if not ep.future.done():
        if now - ep.submitted > self.e.config.env_timeout_s:
          ep.future.cancel()
          self.finish(slot, "env_timeout")
        continue
      self.waiting.discard(slot)
      self.stats.env_seconds += now - ep.submitted
      try:
        result: StepResult = ep.future.result()
      except EnvError as err:
        self.finish(slot, "env_error", dropped_as=f"env_error:{err.reason}")
        continue
      except Exception as err:  # pylint: disable=broad-except
        self.finish(slot, "env_error", dropped_as=f"env_error:{type(err).__name__}")
        continue
      if result.done:
        self.finish(slot, "done", result.outcome)
        continue
      obs = [int(i) for i in result.observation]
      if not obs:
        self.finish(slot, "env_error", dropped_as="env_error:empty_observation")
      elif len(ep.tokens) + len(obs) + 1 > self.L:
        self.finish(slot, "length", {"success": False, **result.outcome})
      else:
        self.to_extend[slot] = [ep.tokens[-1]] + obs  # the turn's last token was never fed
        ep.add(obs, ENV)
        self.stats.env_tokens += len(obs)
        ep.turn_start, ep.checked_chars = len(ep.tokens), 0

  # ---------------------------------------------------------------- admission

  def next_group(self) -> Optional[_Group]:
    while self.queue and self.queue[0].admitted == self.queue[0].request.size:
      self.queue.popleft()
    if self.queue:
      return self.queue[0]
    if self.exhausted or (self.stop is not None and self.stop()):
      return None
    try:
      req = next(self.requests)
    except StopIteration:
      self.exhausted = True
      return None
    if req is None:
      return None  # nothing to start now; ask again next step
    self.order.append(req)
    episodes = [req.env.start(req.task) for _ in range(req.size)]
    group = _Group(req, [int(i) for i in episodes[0].prompt], episodes)
    if len(group.prompt) + 1 > self.L:
      self.stats.finishes["prompt_too_long"] += req.size
      self.stats.dropped["prompt_too_long"] += req.size
      self._ended(req, req.size)
      return self.next_group()
    self.queue.append(group)
    return group

  def admit(self, slot: int) -> bool:
    e, config = self.e, self.e.config
    group = self.next_group()
    if group is None:
      return False
    req = group.request
    if group.row is None:  # one prefill for the whole group, outside the engine mesh
      params, group.version = e.weights()
      T = bucket(len(group.prompt), config.min_prompt_bucket, cap=self.L)
      tokens = np.zeros((1, T), np.int32)
      tokens[0, :len(group.prompt)] = group.prompt
      group.logits, group.row = _prefill_one(params, tokens,
                                             np.asarray([len(group.prompt)], np.int32),
                                             cfg=e.cfg, cache_len=self.L)
      self.stats.prefills += 1
    m = group.admitted
    group.admitted += 1
    self.cache = _insert(self.cache, group.row, slot)
    ep = _Episode(req, m, group.env_episodes[m])
    ep.add(group.prompt, PROMPT)
    ep.fed = len(group.prompt)
    ep.turn_start = len(ep.tokens)
    self.slots[slot] = ep
    self.episodes_B2[slot] = req.index, m
    self._episodes_device = None
    tok, lp, _ = _sample_rows(group.logits, e._seed_key, np.asarray([req.index], np.int32),  # pylint: disable=protected-access
                              np.asarray([m], np.int32), np.zeros(1, np.int32), e._knobs,  # pylint: disable=protected-access
                              **e._static)  # pylint: disable=protected-access
    if group.admitted == req.size:
      group.row = group.logits = None  # the shared prefix is no longer needed
    self.record(slot, int(tok[0]), float(lp[0]), group.version)
    return True

  # ---------------------------------------------------------------- one engine step

  def _forward(self, feeds: dict[int, list[int]]):
    """Feeds tokens to some slots (others get none) and samples one token for each."""
    e = self.e
    params, version = e.weights()
    T = bucket(max(len(f) for f in feeds.values()), 1)
    tokens = np.zeros((self.S, T), np.int32)
    steps = np.zeros((self.S, 2), np.int32)  # tokens fed now, agent tokens so far
    for slot, feed in feeds.items():
      tokens[slot, :len(feed)] = feed
      steps[slot] = len(feed), self.slots[slot].generated
    put = e._put  # pylint: disable=protected-access
    if self._episodes_device is None:  # changes only when episodes are admitted
      self._episodes_device = put(self.episodes_B2, ("batch", None))
    self.cache, tok, lp, _ = _extend_and_sample(
        params, self.cache, put(tokens, ("batch", None)), put(steps, ("batch", None)),
        e._seed_key, self._episodes_device, e._knobs, cfg=e.cfg, **e._static)  # pylint: disable=protected-access
    tok, lp = np.asarray(tok), np.asarray(lp)
    for slot in sorted(feeds):
      self.slots[slot].pending = None
      self.slots[slot].fed += len(feeds[slot])
      self.record(slot, int(tok[slot]), float(lp[slot]), version)

  def recompute(self):
    """New weights arrived: every live cache row and every shared prefix is computed
    again with them (see `EngineConfig.recompute_on_swap`)."""
    e = self.e
    params, self.version = e.weights()
    for group in self.queue:
      if group.row is not None:
        group.row = group.logits = None  # prefilled again at the next admission
    live = [s for s, ep in enumerate(self.slots) if ep is not None and ep.fed]
    if not live:
      return
    T = bucket(max(self.slots[s].fed for s in live), self.e.config.min_prompt_bucket, cap=self.L)
    tokens = np.zeros((self.S, T), np.int32)
    lengths = np.ones(self.S, np.int32)  # free slots: a dummy token, overwritten on admission
    for s in live:
      ep = self.slots[s]
      tokens[s, :ep.fed] = ep.tokens[:ep.fed]
      lengths[s] = ep.fed
    _, self.cache = _prefill_all(params, e._put(tokens, ("batch", None)),  # pylint: disable=protected-access
                                 e._put(lengths, ("batch",)), cfg=e.cfg, cache_len=self.L)  # pylint: disable=protected-access
    self.stats.recomputes += 1

  def step(self, on_step) -> bool:
    """One engine step; False when the run is over."""
    if self.stop is not None and self.stop():
      for slot in range(self.S):
        if self.slots[slot] is not None:
          self.finish(slot, "interrupted")
      return False
    if on_step is not None:
      on_step()
    if self.e.config.recompute_on_swap and self.e.weights()[1] != self.version:
      self.recompute()
    self.collect()
    for slot in range(self.S):
      if self.slots[slot] is None and not self.admit(slot):
        break
    if self.to_extend:
      feeds, self.to_extend = self.to_extend, {}
      self._forward(feeds)
      self.stats.extensions += 1
    active = {s: [ep.pending] for s, ep in enumerate(self.slots)
              if ep is not None and ep.pending is not None}
    if active:
      self._forward(active)
      self.stats.decode_steps += 1
      return True
    if self.waiting or self.to_extend:
      time.sleep(0.001)  # every live slot waits for its environment
      return True
    if any(ep is not None for ep in self.slots) or self.next_group() is not None:
      return True
    if not self.exhausted:
      time.sleep(0.001)  # the request stream has nothing to start yet
      return True
    return False
