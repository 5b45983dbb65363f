"""Tracer throughput and overhead: traced vs untraced sandboxed runs of the same programs.

    python -m benchmarks.trace_throughput                       # CruxEval dev (+ synthetic)
    python -m benchmarks.trace_throughput --batch_size=64 --num_workers=2 --repeats=3

For each program set (only its programs that trace ok), three timings of the same requests, batches and workers:
(a) untraced: the tracer program with tracing switched off (each item still runs in a
forked child: CONTEXT executed as `__main__`, then its entry, i.e. `f(input)`, called)
in the same sandbox batch mode, (b) traced: `trace_requests` (tracing, JSON transport
and the host-side strict validation included), (c) the generation job
(data_pipelines.generate.traces, local runner: tracing + ArrayRecord/JSONL shard
writes), and (d) in-process: microseconds per program spent in the tracer's
`trace_item` with and without tracing, measured inside one sandboxed process (no
start-up, fork or transport), i.e. the tracer's own cost. (b)/(a) is the end-to-end
overhead of tracing (start-up and fork dominate small programs); (d)'s ratio is the
slowdown of the program itself. Absolute rates on shared machines are noise, ratios
measured in the same process are not.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import tempfile
import time

from data_pipelines.generate import sources as gen_sources
from data_pipelines.generate import traces as gen
from data_pipelines.traces import executors
from data_pipelines.traces.sources import cruxeval_requests, read_jsonl
from data_pipelines.traces.trace import TraceLimits, trace_requests, tracer_source

CRUXEVAL_DEV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                            "shared", "data", "cruxeval_dev.jsonl")

# Tracing off, everything else of the tracer program unchanged.
_UNTRACE = (("    sys.settrace(tracer.global_trace)\n    try:\n      entry()\n",
             "    try:\n      entry()\n"),
            ("  if not tracer.done:\n    if not tracer.frames and raised",
             "  if False:\n    if not tracer.frames and raised"))


def untraced_source() -> str:
  text = tracer_source()
  for old, new in _UNTRACE:
    if text.count(old) != 1:
      raise RuntimeError(f"tracer_program.py changed: expected one {old.strip()!r} to switch "
                         "tracing off; update benchmarks/trace_throughput.py")
    text = text.replace(old, new)
  return text


def run_untraced(requests, limits, executor, batch_size, num_workers) -> int:
  """Runs every request untraced in tracer-style batches; returns how many ran to the end."""
  program = untraced_source()

  def batch(items):
    payload = json.dumps({"items": [{"context": q.context, "stdin": q.stdin} for q in items],
                          "max_events": limits.max_events, "max_bytes": limits.max_bytes,
                          "timeout_s": limits.timeout_s, "memory_mb": limits.memory_mb,
                          "max_output_bytes": getattr(executor, "output_limit_bytes", None)})
    out = executor(program, stdin=payload, timeout_s=len(items) * (limits.timeout_s + 1) + 30,
                   memory_mb=limits.memory_mb + 512)
    return sum(json.loads(line).get("status") == "ok" for line in out.stdout.splitlines())

  batches = [requests[i:i + batch_size] for i in range(0, len(requests), batch_size)]
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    return sum(pool.map(batch, batches))


_TIMING_LOOP = """
import json as _json, sys as _sys, time as _time
_request = _json.loads(_sys.stdin.read())
_elapsed = 0.0
for _ in range(_request["rounds"]):
  for _item in _request["items"]:
    _t0 = _time.perf_counter()
    _r = trace_item(_item["context"], "", _request["max_events"], _request["max_bytes"])
    _elapsed += _time.perf_counter() - _t0
    assert _r["status"] == "ok", _r
_sys.__stdout__.write(_json.dumps({"seconds": _elapsed}) + "\\n")
"""


def in_process_seconds(requests, limits, executor, traced: bool, rounds: int) -> float:
  """Seconds spent in `trace_item` (traced or not) over all requests x rounds, measured
  inside one sandboxed process: the tracer's own cost without start-up, fork or JSON."""
  program = tracer_source() if traced else untraced_source()
  assert program.endswith("\nmain()\n")
  program = program[:-len("main()\n")] + _TIMING_LOOP
  payload = json.dumps({"items": [{"context": q.context} for q in requests], "rounds": rounds,
                        "max_events": limits.max_events, "max_bytes": limits.max_bytes})
  out = executor(program, stdin=payload, timeout_s=600, memory_mb=limits.memory_mb + 512)
  try:
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
  except (ValueError, IndexError):
    raise RuntimeError(f"timing run failed: {out.stderr[-2000:]}") from None


def run_traced(requests, limits, executor, batch_size, num_workers) -> int:
  results = trace_requests(requests, limits=limits, executor=executor, batch_size=batch_size,
                           num_workers=num_workers)
  return sum(r.ok for r in results)


def run_job(source_spec, n, batch_size, num_workers, unsandboxed) -> int:
  out = tempfile.mkdtemp(prefix="trace_throughput_")
  try:
    job = gen.TraceJob(source_spec, out, num_shards=max(2, num_workers * 2),
                       batch_size=batch_size, limit=n, unsandboxed=unsandboxed)
    return gen.run_job(job, num_workers=num_workers)["total"]["ok"]
  finally:
    shutil.rmtree(out, ignore_errors=True)


def _ok_subset_file(requests, ok_ids, tmp_dir) -> str:
  """A jsonl source of the requests that traced ok (for the job timing)."""
  path = os.path.join(tmp_dir, f"ok_{len(os.listdir(tmp_dir))}.jsonl")
  with open(path, "w", encoding="utf-8") as f:
    for q in requests:
      if q.id in ok_ids:
        f.write(json.dumps({"id": q.id, "context": q.context, "stdin": q.stdin}) + "\n")
  return f"jsonl:{path}"


def timed(fn, repeats: int) -> tuple[float, int]:
  fn()  # warm-up
  times, ok = [], 0
  for _ in range(repeats):
    t0 = time.perf_counter()
    ok = fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), ok


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--cruxeval", default=CRUXEVAL_DEV)
  ap.add_argument("--synthetic", type=int, default=200, help="synthetic programs (0: none)")
  ap.add_argument("--batch_size", type=int, default=64)
  ap.add_argument("--num_workers", type=int, default=2)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--rounds", type=int, default=5, help="in-process timing passes")
  ap.add_argument("--unsandboxed", action="store_true", help="plain subprocesses (trusted)")
  args = ap.parse_args()
  executor = executors.choose_executor(unsandboxed=args.unsandboxed)
  limits = TraceLimits()
  sets = [("cruxeval", f"cruxeval:{os.path.abspath(args.cruxeval)}")]
  if args.synthetic:
    try:
      gen_sources.synthetic_generator()
      sets.append(("synthetic", f"synthetic:0:{args.synthetic}"))
    except ValueError as e:
      print(f"(no synthetic programs: {e})")
  print(f"executor: {executor.__name__}, batch_size {args.batch_size}, {args.num_workers} "
        f"workers, median of {args.repeats}; rates in programs/s on {os.cpu_count()} CPUs")
  header = (f"{'programs':>10} {'n':>5} | {'untraced/s':>10} {'traced/s':>9} {'job/s':>7} | "
            f"{'traced/untraced time':>20} {'job/untraced time':>17} | "
            f"{'in-process us/prog untraced':>27} {'traced':>8} {'ratio':>6} | ok traced")
  print(header)
  print("-" * len(header))
  tmp_dir = tempfile.mkdtemp(prefix="trace_throughput_src_")
  for name, spec in sets:
    # Only programs that trace ok: a dropped one (e.g. stopped at max_events) would run
    # to its end, or its time limit, untraced.
    requests = gen_sources.load_requests(spec)
    traced = trace_requests(requests, limits=limits, executor=executor,
                            batch_size=args.batch_size, num_workers=args.num_workers)
    ok_ids = {r.id for r in traced if r.ok}
    spec = _ok_subset_file(requests, ok_ids, tmp_dir)
    requests = [q for q in requests if q.id in ok_ids]
    n = len(requests)
    t_u, ok_u = timed(lambda: run_untraced(requests, limits, executor, args.batch_size,
                                           args.num_workers), args.repeats)
    t_t, ok_t = timed(lambda: run_traced(requests, limits, executor, args.batch_size,
                                         args.num_workers), args.repeats)
    t_j, _ = timed(lambda: run_job(spec, n, args.batch_size, args.num_workers,
                                   args.unsandboxed), args.repeats)
    s_u = in_process_seconds(requests, limits, executor, False, args.rounds)
    s_t = in_process_seconds(requests, limits, executor, True, args.rounds)
    us = 1e6 / (n * args.rounds)
    print(f"{name:>10} {n:>5} | {n / t_u:>10.1f} {n / t_t:>9.1f} {n / t_j:>7.1f} | "
          f"{t_t / t_u:>20.2f} {t_j / t_u:>17.2f} | "
          f"{s_u * us:>27.1f} {s_t * us:>8.1f} {s_t / s_u:>6.1f} | {ok_t}/{n} (untraced ran {ok_u})")
  shutil.rmtree(tmp_dir, ignore_errors=True)


if __name__ == "__main__":
  main()
