"""Sandboxed reward throughput: the competitive-programming environment
(`cwm_jax/rl/envs/code.py`) stepping many episodes concurrently through a thread pool
over a `SandboxPool`, vs one episode at a time.

    python -m benchmarks.rl_rewards                              # 64 episodes, pools 1,2,4
    python -m benchmarks.rl_rewards --episodes=128 --tests=5 --pools=1,2,4,8 --rounds=3

Workload: `--episodes` episodes of one small stdin problem (read n numbers, print
their sum) with `--tests` tests, each answered by the same correct solution in
CWM's answer format (reasoning, `</think>`, one ```python block, `<|eot_id|>`),
tokenised with the toy tiktoken tokenizer. Every `episode.step` runs the solution
on each test in its own sandboxed check program (all pass, so `--tests`
executions per episode). Requires bubblewrap.
  one at a time  the reference: the episodes stepped one after another on a
                 SandboxPool(1), in this thread.
  pool n         SandboxPool(n) shared by the env, episodes stepped from a thread
                 pool of n threads (as the rollout engine steps environments on
                 its `env_workers` threads over a SandboxPool(env_workers)).
Pools are started before timing (start-up excluded) and warmed with one episode.
Each round runs the reference and then every pool size; the table shows each
row's median over `--rounds` rounds and its ratio to the reference of the same
rounds. Absolute rates on shared CPUs are noise; read the ratios.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import statistics
import sys
import tempfile
import time

from cwm_jax.rl.envs.base import Task
from cwm_jax.rl.envs.code import CodeEnv, CodeEnvConfig
from cwm_jax.sandbox import SandboxPool
from cwm_jax.tokenizer import special_tokens
from cwm_jax.tokenizer.toy import toy_tiktoken_tokenizer

SOLUTION = ("import sys\ndata = sys.stdin.read().split()\nn = int(data[0])\n"
            "print(sum(map(int, data[1:n + 1])))")


def problem(tests: int) -> dict:
  cases = [list(range(k, k + 3 + k % 4)) for k in range(tests)]
  return {"id": "sum_n", "prompt": "Read n, then n integers; print their sum.",
          "tests": [{"input": f"{len(c)}\n{' '.join(map(str, c))}\n", "output": f"{sum(c)}\n"}
                    for c in cases], "time_limit_s": 5.0}


def step_all(env, task, action, episodes: int, threads: int) -> list:
  """Steps `episodes` fresh episodes; returns their outcomes."""
  if threads == 0:
    return [env.start(task).step(action).outcome for _ in range(episodes)]
  with concurrent.futures.ThreadPoolExecutor(threads) as ex:
    return list(ex.map(lambda _: env.start(task).step(action).outcome, range(episodes)))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--episodes", type=int, default=64)
  ap.add_argument("--tests", type=int, default=3)
  ap.add_argument("--pools", default="1,2,4", help="SandboxPool sizes (= stepping threads)")
  ap.add_argument("--rounds", type=int, default=3)
  args = ap.parse_args(argv)
  if shutil.which("bwrap") is None:
    sys.exit("error: bubblewrap (bwrap) is not installed; cwm_jax.sandbox needs it "
             "(apt-get install -y bubblewrap).")


  with tempfile.TemporaryDirectory(prefix="rl_rewards_tok_") as tmp:
    tokenizer = toy_tiktoken_tokenizer(tmp)  # read into memory; the file can go
  task = Task("sum_n", "code", problem(args.tests))
  text = f"Sum them.\n</think>\nHere is my solution:\n```python\n{SOLUTION}\n```"
  action = tokenizer.encode(text) + [tokenizer.special_ids[special_tokens.EOT]]
  sizes = [int(n) for n in args.pools.split(",")]
  rows = [("one at a time", 1, 0)] + [(f"pool {n}", n, n) for n in sizes]
  pools = {n: SandboxPool(n) for n in sorted({1, *sizes})}
  envs = {n: CodeEnv(tokenizer, CodeEnvConfig(), sandbox=pool) for n, pool in pools.items()}
  try:
    for env in envs.values():  # warm-up: page cache, fork servers
      assert env.start(task).step(action).outcome["success"]
    seconds = {name: [] for name, _, _ in rows}
    executions = {}
    for _ in range(args.rounds):
      for name, n, threads in rows:
        t0 = time.perf_counter()
        outcomes = step_all(envs[n], task, action, args.episodes, threads)
        seconds[name].append(time.perf_counter() - t0)
        bad = [o for o in outcomes if not o["success"]]
        if bad:
          raise RuntimeError(f"{name}: {len(bad)} episodes failed, e.g. {bad[0]}")
        executions[name] = sum(o["tests_run"] for o in outcomes)
  finally:
    for pool in pools.values():
      pool.close()

  print(f"code env, {args.episodes} episodes x {args.tests} tests (one sandboxed execution "
        f"per test), correct solutions; median of {args.rounds} rounds; "
        f"{len(os.sched_getaffinity(0))} CPUs")
  header = (f"{'':14} {'threads':>7} {'executions/s':>12} {'episodes/s':>10} "
            f"{'ms/episode':>10} {'x one at a time':>15}")
  print(header)
  print("-" * len(header))
  ref = seconds["one at a time"]
  for name, _, threads in rows:
    sec = statistics.median(seconds[name])
    ratio = statistics.median(r / s for r, s in zip(ref, seconds[name]))
    print(f"{name:14} {threads or 1:>7} {executions[name] / sec:>12.1f} "
          f"{args.episodes / sec:>10.1f} {sec / args.episodes * 1e3:>10.1f} {ratio:>15.2f}")


if __name__ == "__main__":
  main()
