"""Per-run latency of `print(1)`: (a) a plain, unsandboxed `python -c` subprocess
(the reference), (b) a fresh bubblewrap sandbox + interpreter per run, (c) the
SandboxPool fork-server (a warm sandboxed runner forks a child per job), and (d) the
pool with `fork_python=False` (a fresh interpreter per job inside a warm sandbox).

    python -m benchmarks.sandbox_startup               # 50 runs each
    python -m benchmarks.sandbox_startup --runs=200

Each row is the median (and p90) wall time of one call from the host, end to end:
start-up, JSON round trip and clean-up included. Ratios are against (a), measured in
the same process; absolute times on shared machines are noise.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from cwm_jax.sandbox import Sandbox, SandboxConfig, SandboxPool
from cwm_jax.sandbox.launch import host_identity, sandbox_python


def timed(fn, runs: int) -> list[float]:
  fn()  # warm-up (page cache, probe)
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def check(result):
  assert result.stdout == "1\n", result
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", type=int, default=50)
  parser.add_argument("--workers", type=int, default=1)
  args = parser.parse_args()

  config = SandboxConfig()
  inner_python = sandbox_python(config, host_identity(config)[0])
  rows = [("(a) subprocess python -c (unsandboxed)",
           timed(lambda: subprocess.run([sys.executable, "-c", "print(1)"], check=True,
                                        capture_output=True), args.runs))]
  if inner_python != sys.executable:
    rows.append((f"(a1) same, sandbox's interpreter {inner_python}",
                 timed(lambda: subprocess.run([inner_python, "-c", "print(1)"], check=True,
                                              capture_output=True), args.runs)))
  sandbox = Sandbox(config)
  rows.append(("(b) fresh bwrap + python per run",
               timed(lambda: check(sandbox.run_python("print(1)")), args.runs)))
  with SandboxPool(args.workers, config) as pool:
    rows.append((f"(c) SandboxPool({args.workers}) fork per job",
                 timed(lambda: check(pool.run_python("print(1)")), args.runs)))
  exec_config = SandboxConfig(fork_python=False)
  with SandboxPool(args.workers, exec_config) as pool:
    rows.append((f"(d) SandboxPool({args.workers}) fresh interpreter per job",
                 timed(lambda: check(pool.run_python("print(1)")), args.runs)))

  # (a1) is the fair reference when the sandbox runs another interpreter than the host.
  references = [statistics.median(times) for name, times in rows[:2] if name.startswith("(a")]
  print(f"print(1), {args.runs} runs each, host interpreter {sys.executable}")
  print(f"{'':<58}{'median ms':>10}{'p90 ms':>9}{'x (a)':>8}"
        + (f"{'x (a1)':>8}" if len(references) > 1 else ""))
  for name, times in rows:
    median = statistics.median(times)
    p90 = sorted(times)[int(0.9 * (len(times) - 1))]
    ratios = "".join(f"{median / ref:>8.2f}" for ref in references)
    print(f"{name:<58}{median * 1e3:>10.1f}{p90 * 1e3:>9.1f}{ratios}")


if __name__ == "__main__":
  main()
