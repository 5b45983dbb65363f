"""Which task comes next: a weighted mixture of environments' task streams, with
solve-rate filtering, as a deterministic and checkpointable iterator.

    mixture = TaskMixture({"code": ListTasks(tasks, seed=0), "toy_copy": env}, {"code": 3, ...},
                          seed=0, solve_rates=SolveRates(lo=0.1, hi=0.7))
    env_name, task = next(mixture)
    mixture.record(task.id, success)          # outcomes feed the solve-rate filter
    state = mixture.get_state(); mixture.set_state(state)   # JSON, exact resume

Draw n picks an environment with probability proportional to its weight, from a
random stream keyed by (seed, n), then that environment's next task. A task whose
recent solve rate (the last `window` outcomes, once there are `min_samples`) lies
outside [lo, hi] is skipped and counted (CWM keeps tasks solved 10% to 70% of the
time: the others teach nothing).
"""

from __future__ import annotations

import collections
import random
from collections.abc import Mapping, Sequence
from typing import Protocol

from cwm_jax.rl.envs.base import Task


class TaskSource(Protocol):
  def task(self, k: int) -> Task: ...


class ListTasks:
  """A finite task list as an endless stream: epoch e visits every task once, in
  an order shuffled by (seed, e)."""

  def __init__(self, tasks: Sequence[Task], seed: int = 0):
    if not tasks:
      raise ValueError("ListTasks: no tasks.")
    self.tasks, self.seed = list(tasks), seed
    self._orders: dict[int, list[int]] = {}

  def task(self, k: int) -> Task:
    epoch, i = divmod(k, len(self.tasks))
    if epoch not in self._orders:
      order = list(range(len(self.tasks)))
      random.Random(f"{self.seed}:{epoch}").shuffle(order)
      self._orders = {epoch: order}  # only the current epoch is kept
    return self.tasks[self._orders[epoch][i]]


class SolveRates:
  """Recent outcomes per task id; `keep(id)` says whether a task is worth drawing."""

  def __init__(self, lo: float = 0.0, hi: float = 1.0, window: int = 16, min_samples: int = 4):
    if not 0 <= lo <= hi <= 1:
      raise ValueError(f"SolveRates: expected 0 <= lo <= hi <= 1, got lo={lo}, hi={hi}.")
    self.lo, self.hi, self.window, self.min_samples = lo, hi, window, min_samples
    self.history: dict[str, collections.deque] = {}

  @property
  def active(self) -> bool:
    return self.lo > 0 or self.hi < 1

  def record(self, task_id: str, success: bool) -> None:
    self.history.setdefault(task_id, collections.deque(maxlen=self.window)).append(int(success))

  def rate(self, task_id: str):
    h = self.history.get(task_id)
    return sum(h) / len(h) if h else None

  def keep(self, task_id: str) -> bool:
    h = self.history.get(task_id)
    if not self.active or h is None or len(h) < self.min_samples:
      return True
    return self.lo <= sum(h) / len(h) <= self.hi

  def get_state(self) -> dict:
    return {k: list(v) for k, v in self.history.items()}

  def set_state(self, state: dict) -> None:
    self.history = {k: collections.deque(v, maxlen=self.window) for k, v in state.items()}


class TaskMixture:
  """See the module docstring."""

  MAX_SKIPS = 10_000

  def __init__(self, sources: Mapping[str, TaskSource], weights: Mapping[str, float], *,
               seed: int = 0, solve_rates: SolveRates | None = None):
    if set(sources) != set(weights) or not sources:
      raise ValueError(f"TaskMixture: sources {sorted(sources)} and weights {sorted(weights)} "
                       "must name the same environments.")
    bad = {k: w for k, w in weights.items() if not w > 0}
    if bad:
      raise ValueError(f"TaskMixture: weights must be > 0, got {bad}.")
    self.sources, self.names = dict(sources), sorted(sources)
    total = sum(weights[n] for n in self.names)
    self.cumulative = []
    acc = 0.0
    for n in self.names:
      acc += weights[n] / total
      self.cumulative.append(acc)
    self.seed = seed
    self.solve_rates = solve_rates or SolveRates()
    self.draws = 0
    self.counters = {n: 0 for n in self.names}
    self.skipped = collections.Counter()

  def __iter__(self):
    return self

  def __next__(self) -> tuple[str, Task]:
    for _ in range(self.MAX_SKIPS):
      u = random.Random(f"{self.seed}:mix:{self.draws}").random()
      self.draws += 1
      name = next(n for n, c in zip(self.names, self.cumulative) if u < c or c == 1.0)
      task = self.sources[name].task(self.counters[name])
      self.counters[name] += 1
      if self.solve_rates.keep(task.id):
        return name, task
      self.skipped[f"solve_rate:{name}"] += 1
    raise RuntimeError(f"TaskMixture: {self.MAX_SKIPS} draws in a row were outside the solve-rate "
                       f"band [{self.solve_rates.lo}, {self.solve_rates.hi}]: every task is too easy "
                       "or too hard for the current policy; widen the band.")

  def record(self, task_id: str, success: bool) -> None:
    self.solve_rates.record(task_id, success)

  def get_state(self) -> dict:
    return {"draws": self.draws, "counters": dict(self.counters),
            "solve_rates": self.solve_rates.get_state(), "skipped": dict(self.skipped)}

  def set_state(self, state: dict) -> None:
    self.draws = state["draws"]
    self.counters = {n: state["counters"].get(n, 0) for n in self.names}
    self.solve_rates.set_state(state["solve_rates"])
    self.skipped = collections.Counter(state.get("skipped", {}))
