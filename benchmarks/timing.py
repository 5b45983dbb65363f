"""The one timing loop the benchmarks share: the first call (compile + run), then
the median wall time of `repeats` more, each synchronised with
`jax.block_until_ready` (a no-op for non-JAX results, e.g. torch calls that sync
themselves)."""

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
