"""The timing loops the benchmarks share. Every call is synchronised with
`jax.block_until_ready` (a no-op for non-JAX results, e.g. torch calls that sync
themselves).

`first_and_median`: the first call (compile + run), then the median wall time of
`repeats` more. `interleaved`: several contenders called in turn, round after
round, so that the machine's slow spells hit all of them alike; their ratios
are taken per round."""

from __future__ import annotations

import statistics
import time

import jax


def first_and_median(fn, *args, repeats: int) -> tuple[float, float]:
  """(seconds of the first call, median seconds of the next `repeats` calls)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


def interleaved(fns: dict, *, rounds: int) -> dict[str, list[float]]:
  """{name: seconds of each round} for zero-argument callables called in turn
  (the order rotates every round), after one warm-up call each."""
  for fn in fns.values():
    jax.block_until_ready(fn())
  names, times = list(fns), {name: [] for name in fns}
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      t0 = time.perf_counter()
      jax.block_until_ready(fns[name]())
      times[name].append(time.perf_counter() - t0)
  return times


def median_ratio(slow: list[float], fast: list[float]) -> float:
  """Median over rounds of slow / fast (how many times faster `fast` ran)."""
  return statistics.median(s / f for s, f in zip(slow, fast))
