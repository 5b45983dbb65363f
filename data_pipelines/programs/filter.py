"""Keep the generated programs that run quickly, deterministically and without error.

    kept, dropped = filter_programs(generate_programs(0, 1000))
    python -m data_pipelines.programs.filter --seed 0 -n 1000 --out programs.jsonl

Each record is traced as a CruxEval program (FORMATS.md's function-level CONTEXT) in
the sandbox; a program is kept when its trace is ok, within `max_events`, its entry
returned normally, and (with `check_determinism`) a second run gives the same trace.
Kept records gain CruxEval's `output` field (repr of the return value) and `events`.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from collections.abc import Iterable, Sequence

from data_pipelines.programs.generate import generate_programs
from data_pipelines.traces import executors
from data_pipelines.traces.sources import cruxeval_requests
from data_pipelines.traces.trace import TraceLimits, trace_requests


def filter_programs(records: Iterable[dict], *, max_events: int = 300, min_events: int = 0,
                    timeout_s: float = 2.0, memory_mb: int = 512,
                    check_determinism: bool = True, executor=None, batch_size: int = 64,
                    num_workers: int = 2) -> tuple[list[dict], collections.Counter]:
  """(kept records, Counter of dropped records by reason).

  Reasons are the tracer's "status/kind" (e.g. "too_long/max_events", "timeout/timeout",
  "error/entry_error"), "raised" (f raised an exception), "too_short" (< min_events
  frames) and "nondeterministic" (two runs traced differently).
  """
  records = list(records)
  limits = TraceLimits(max_events=max_events, timeout_s=timeout_s, memory_mb=memory_mb)
  executor = executor or executors.choose_executor()
  requests = cruxeval_requests(records)

  def run():
    return trace_requests(requests, limits=limits, executor=executor, batch_size=batch_size,
                          num_workers=num_workers)

  results = run()
  again = run() if check_determinism else results
  kept, dropped = [], collections.Counter()
  for record, result, second in zip(records, results, again):
    if not result.ok:
      dropped[f"{result.status}/{result.kind}"] += 1
    elif result.exception is not None:
      dropped["raised"] += 1
    elif len(result.trace.frames) < min_events:
      dropped["too_short"] += 1
    elif not second.ok or second.trace != result.trace:
      dropped["nondeterministic"] += 1
    else:
      kept.append({**record, "output": result.trace.return_value,
                   "events": len(result.trace.frames)})
  return kept, dropped


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m data_pipelines.programs.filter",
                               description="Generate synthetic programs and keep those that "
                               "trace ok (CruxEval-format JSONL with outputs).")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("-n", type=int, default=1000)
  ap.add_argument("--out", help="JSONL file for the kept records (default: stdout)")
  ap.add_argument("--max_events", type=int, default=300)
  ap.add_argument("--num_workers", type=int, default=2)
  ap.add_argument("--no_determinism_check", action="store_true")
  ap.add_argument("--unsandboxed", action="store_true",
                  help="run without cwm_jax.sandbox (our own programs are trusted)")
  args = ap.parse_args(argv)
  start = time.time()
  kept, dropped = filter_programs(
      generate_programs(args.seed, args.n), max_events=args.max_events,
      check_determinism=not args.no_determinism_check, num_workers=args.num_workers,
      executor=executors.choose_executor(unsandboxed=args.unsandboxed))
  out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
  try:
    for record in kept:
      out.write(json.dumps(record) + "\n")
  finally:
    if args.out:
      out.close()
  print(f"kept {len(kept)}/{args.n}, dropped {dict(sorted(dropped.items()))}, "
        f"{args.n / (time.time() - start):.1f} programs/s", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
