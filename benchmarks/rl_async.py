"""Asynchronous vs synchronous RL on the toy tasks: wall-clock until the reward
reaches a threshold, `train_rl` with `experiments/configs/rl.py:tiny`, on a
2-device CPU host.

    python -m benchmarks.rl_async                              # threshold 0.3, 300 steps max
    python -m benchmarks.rl_async --threshold=0.3 --window=20 --max_steps=500 --max_lag=1

Runs (`--order`), one after the other, each in a fresh subprocess and workdir with
XLA_FLAGS=--xla_force_host_platform_device_count=2 set before JAX is imported:
  sync        rl.mode=sync, engine_devices=0: the engine and the learner take turns
              on both devices (colocated; the engine's slots split over a 2-device mesh).
  sync_split  rl.mode=sync, engine_devices=1: they take turns, the engine on device 0
              and the learner on device 1 (async's placement without the overlap; it
              separates the gain of overlapping from that of the engine's placement).
  async       rl.mode=async, engine_devices=1, max_lag=`--max_lag`: the engine runs
              continuously on device 0, the learner on device 1.
Each logs every step (train.log_every=1) and saves no checkpoint while measured (the
SIGTERM that stops it saves one, after the measurement). The parent
polls each run's metrics.jsonl and stamps every step's line with the seconds since
the subprocess was launched (imports and compilation included); a run stops once the
moving average of `reward_mean` over `--window` steps first reaches `--threshold`
(or at `--max_steps`). Printed per run: the step and the seconds at which it got
there, the seconds of the first step's line (start-up and compilation), and the
mean seconds per step after it; then the ratios sync / async and sync_split / async
of time to threshold.
On a 2-core host both fake devices share the same two cores: async gains only what
the host loops (Python, environment steps, transfers) leave idle. Shared machine:
absolute seconds are noise; the ratios are of runs taken minutes apart.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

MODES = {"sync": dict(mode="sync", engine_devices=0),
         "sync_split": dict(mode="sync", engine_devices=1),
         "async": dict(mode="async", engine_devices=1)}


def child(mode: str, workdir: str, steps: int, max_lag: int, seed: int) -> None:
  """One run in this (fresh) process: 2 host devices, then `train_rl`."""
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=2").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.getcwd())
  from experiments.configs import rl as rl_configs  # pylint: disable=import-outside-toplevel
  from cwm_jax.rl.run import train_rl  # pylint: disable=import-outside-toplevel
  from cwm_jax.train.config import experiment_config  # pylint: disable=import-outside-toplevel
  config = rl_configs.get_config("tiny")
  config.seed = seed
  config.train.steps = steps
  config.optimizer.total_steps = steps
  config.train.log_every = 1
  config.train.checkpoint_every = 10**6  # one save at the end
  for key, value in dict(MODES[mode], max_lag=max_lag).items():
    config.rl[key] = value
  train_rl(experiment_config(config), workdir)


def watch(mode: str, args) -> dict:
  """Launches one run, follows its metrics, stops it at the threshold."""
  workdir = tempfile.mkdtemp(prefix=f"rl_async_{mode}_")
  path = os.path.join(workdir, "metrics.jsonl")
  cmd = [sys.executable, "-m", "benchmarks.rl_async", f"--child={mode}", f"--workdir={workdir}",
         f"--max_steps={args.max_steps}", f"--max_lag={args.max_lag}", f"--seed={args.seed}"]
  log = open(os.path.join(workdir, "log.txt"), "w")
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
  rewards, stamps, offset = collections.deque(maxlen=args.window), {}, 0
  result = dict(mode=mode, step=None, seconds=None, first=None, last_step=0, last_s=None,
                best_avg=float("-inf"), workdir=workdir)
  while True:
    finished = proc.poll() is not None
    if os.path.exists(path):
      with open(path) as f:
        f.seek(offset)
        chunk = f.read()
      lines = chunk[:chunk.rfind("\n") + 1]
      offset += len(lines)
      now = time.perf_counter() - t0
      for line in lines.splitlines():
        row = json.loads(line)
        if "reward_mean" not in row:
          continue
        stamps[row["step"]] = now
        result["first"] = result["first"] or now
        result["last_step"], result["last_s"] = row["step"], now
        rewards.append(row["reward_mean"])
        if len(rewards) == args.window:
          avg = sum(rewards) / args.window
          result["best_avg"] = max(result["best_avg"], avg)
          if avg >= args.threshold and result["step"] is None:
            result["step"], result["seconds"] = row["step"], now
    if result["step"] is not None or finished:
      break
    time.sleep(args.poll_s)
  if proc.poll() is None:
    proc.terminate()
    proc.wait(timeout=60)
  elif proc.returncode:
    raise RuntimeError(f"{mode} run failed (exit {proc.returncode}); see {workdir}/log.txt")
  log.close()
  if not args.keep:
    shutil.rmtree(workdir, ignore_errors=True)
  return result


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--threshold", type=float, default=0.3,
                  help="moving-average reward_mean to reach (random policy: about -0.95)")
  ap.add_argument("--window", type=int, default=20)
  ap.add_argument("--max_steps", type=int, default=300)
  ap.add_argument("--max_lag", type=int, default=1, help="async: learner steps the engine may lead")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--order", default="sync,sync_split,async")
  ap.add_argument("--poll_s", type=float, default=0.2)
  ap.add_argument("--keep", action="store_true", help="keep the workdirs (metrics, logs)")
  ap.add_argument("--child", default="", help=argparse.SUPPRESS)
  ap.add_argument("--workdir", default="", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.child:
    child(args.child, args.workdir, args.max_steps, args.max_lag, args.seed)
    return

  results = [watch(mode, args) for mode in args.order.split(",")]
  print(f"rl.py:tiny on 2 host devices (XLA_FLAGS device_count=2), {os.cpu_count()} CPUs; "
        f"threshold: mean reward_mean over {args.window} steps >= {args.threshold}; "
        f"max {args.max_steps} steps; async max_lag {args.max_lag}; seed {args.seed}")
  header = (f"{'mode':10} {'steps to thr':>12} {'s to thr':>9} {'first step s':>12} "
            f"{'s/step after':>12} {'best avg':>9}")
  print(header)
  print("-" * len(header))
  for r in results:
    steps_after = r["last_step"] - 1
    per = (r["last_s"] - r["first"]) / steps_after if steps_after > 0 else float("nan")
    reached = (f"{r['step']:>12} {r['seconds']:>9.1f}" if r["step"] is not None
               else f"{'not reached':>12} {'-':>9}")
    print(f"{r['mode']:10} {reached} {r['first'] or float('nan'):>12.1f} {per:>12.2f} "
          f"{r['best_avg']:>9.2f}")
  by = {r["mode"]: r for r in results}
  for ref in ("sync", "sync_split"):
    if ref not in by or "async" not in by:
      continue
    if by[ref]["seconds"] and by["async"]["seconds"]:
      print(f"{ref}/async time to threshold: {by[ref]['seconds'] / by['async']['seconds']:.2f}x"
            f"  (steps: {ref} {by[ref]['step']}, async {by['async']['step']})")
    else:
      print(f"{ref}/async: n/a (a run did not reach the threshold; raise --max_steps or lower "
            "--threshold)")


if __name__ == "__main__":
  main()
