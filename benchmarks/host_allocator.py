"""glibc malloc against tcmalloc for the quickstart's train steps, side by side in one run.

    python -m benchmarks.host_allocator                      # both stages, 3 rounds
    python -m benchmarks.host_allocator --what=quickstart_midtrain --rounds=5 --steps=12

Each round runs each measurement of `benchmarks/vs_commit.py` (`--what`, default
the quickstart's pretrain and midtrain steps) in two fresh processes on this tree:
one with `CWM_JAX_TCMALLOC=0` (glibc malloc) and one as the commands run it
(`cwm_jax/host_memory.use_tcmalloc`), in alternating order. Prints tokens/s,
minor page faults and kernel CPU seconds per step, and the median tcmalloc/glibc
ratio. Why it matters: `cwm_jax/host_memory.py`.
"""

from __future__ import annotations

import argparse
import os
import statistics

from benchmarks.vs_commit import SNIPPETS, measure
from cwm_jax.host_memory import find_tcmalloc

ALLOCATORS = {"glibc": {"CWM_JAX_TCMALLOC": "0"}, "tcmalloc": {}}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--what", default="quickstart_pretrain,quickstart_midtrain",
                  help=f"comma-separated, from {sorted(SNIPPETS)}")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--steps", type=int, default=10)
  args = ap.parse_args(argv)
  if find_tcmalloc() is None:
    raise SystemExit("no tcmalloc library found (apt-get install libtcmalloc-minimal4); "
                     "nothing to compare.")
  whats = args.what.split(",")
  unknown = sorted(set(whats) - set(SNIPPETS))
  if unknown:
    raise SystemExit(f"--what: unknown {unknown}; expected some of {sorted(SNIPPETS)}")
  here = os.getcwd()
  print(f"{'what':<20} | {'round':>5} | {'allocator':>9} | {'tok/s':>7} | "
        f"{'faults/step':>11} | {'sys s/step':>10}")
  ratios = {w: [] for w in whats}
  for r in range(args.rounds):
    for what in whats:
      order = list(ALLOCATORS) if r % 2 == 0 else list(ALLOCATORS)[::-1]
      got = {name: measure(here, what, args.steps, ALLOCATORS[name]) for name in order}
      for name in ALLOCATORS:
        g = got[name]
        print(f"{what:<20} | {r:>5} | {name:>9} | {g['tokens_per_s']:>7,.0f} | "
              f"{g['faults_per_step']:>11,.0f} | {g['sys_s_per_step']:>10.3f}", flush=True)
      ratios[what].append(got["tcmalloc"]["tokens_per_s"] / got["glibc"]["tokens_per_s"])
  for what in whats:
    rs = ratios[what]
    print(f"{what}: tcmalloc/glibc tokens/s median {statistics.median(rs):.3f} "
          f"(rounds {', '.join(f'{x:.2f}' for x in rs)})")


if __name__ == "__main__":
  main()
