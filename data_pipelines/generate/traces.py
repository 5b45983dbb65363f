"""Trace generation at scale: program sources -> sandboxed tracer -> sharded trace records.

    python -m data_pipelines.generate.traces --source=cruxeval:PATH --out=DIR --num_shards=8 \\
        [--runner=DirectRunner] [--direct_num_workers=2] [--batch_size=64] [--limit=N]

Requests are cut into `num_shards` contiguous index ranges (shards.shard_range), so a
record's shard depends only on its position in the source. One shard is one unit of
work: its requests are traced in batches (one sandboxed tracer process traces
`batch_size` programs) and written atomically (shards.py). Re-running the same command
skips finished shards; the job manifest `DIR/manifest.json` (counts per shard, by
status and drop reason, and in total) is rebuilt from the shard manifests at the end.

Runners: the CLI defaults to Beam's `DirectRunner`; any Beam runner name
(`DataflowRunner`, ...) builds the same work as an Apache Beam pipeline (shard ids ->
Reshuffle -> trace+write, with Metrics counters); other unknown `--flags` pass through
to Beam's PipelineOptions (Beam is imported only then). `local` maps shards over
`direct_num_workers` processes without Beam.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Sequence

from data_pipelines.generate import shards
from data_pipelines.generate.sources import SPEC_HELP, load_requests, parse_source
from data_pipelines.traces import executors
from data_pipelines.traces import tracer_program as tp
from data_pipelines.traces.format import format_trace
from data_pipelines.traces.sources import TraceRequest
from data_pipelines.traces.stats import TraceStats
from data_pipelines.traces.trace import TraceLimits, TraceResult, trace_requests

LOCAL_RUNNER = "local"
# Shards made under another trace format (tracer_program.TRACE_FORMAT_VERSION) are redone.
FORMAT_VERSION = tp.TRACE_FORMAT_VERSION


@dataclasses.dataclass(frozen=True)
class TraceJob:
  """What to trace and where; equal jobs produce identical shards."""
  source: str  # a --source spec (sources.py)
  out_dir: str
  num_shards: int
  limits: TraceLimits = TraceLimits()
  batch_size: int = 64
  limit: int | None = None  # trace only the first `limit` requests
  unsandboxed: bool = False  # test-only: trusted programs without the sandbox

  def identity(self) -> dict:
    """The fields that decide the shards' content (checked when resuming)."""
    return {"source": self.source, "num_shards": self.num_shards, "limit": self.limit,
            "limits": dataclasses.asdict(self.limits), "format_version": FORMAT_VERSION}


def trace_record(request: TraceRequest, result: TraceResult, source_kind: str) -> dict:
  """The canonical record of one request (ok or dropped): what a shard stores."""
  ok = result.ok
  return {"id": request.id, "source": source_kind, "context": request.context,
          "stdin": request.stdin, "status": result.status, "kind": result.kind,
          "reason": result.reason, "trace_text": format_trace(result.trace) if ok else "",
          "num_events": len(result.trace.frames) if ok else 0,
          "num_bytes": result.num_bytes if ok else 0, "exception": result.exception,
          "stdout": result.stdout, "repr_fallbacks": result.repr_fallbacks}


def shard_manifest(job: TraceJob, index: int, stats: TraceStats, seconds: float) -> dict:
  paths = shards.shard_paths("", index, job.num_shards)
  return {"shard": index, "array_record": paths["array_record"], "jsonl": paths["jsonl"],
          "counts": stats.to_dict(), "seconds": round(seconds, 3)}


class RetryingExecutor:
  """An executor that re-runs a call the harness failed to run (exit code None without a
  timeout: e.g. a sandbox that could not start under load), so that a transient
  infrastructure failure does not become `error/process_died` records in a shard."""

  def __init__(self, executor: executors.Executor, attempts: int = 4, backoff_s: float = 0.5):
    self.executor, self.attempts, self.backoff_s = executor, attempts, backoff_s
    self.output_limit_bytes = getattr(executor, "output_limit_bytes", None)
    self.retries = 0
    self._lock = threading.Lock()

  def __call__(self, program: str, *, stdin: str, timeout_s: float, memory_mb: int
               ) -> executors.ExecOutput:
    for attempt in range(self.attempts):
      out = self.executor(program, stdin=stdin, timeout_s=timeout_s, memory_mb=memory_mb)
      if out.exit_code is not None or out.timed_out or out.memory_exceeded or out.stdout:
        return out
      if attempt + 1 < self.attempts:
        with self._lock:
          self.retries += 1
        logging.warning("executor failed to run a batch (%s); retrying",
                        out.stderr.strip()[-200:] or "no details")
        time.sleep(self.backoff_s * 2 ** attempt)
    return out


def run_shard(job: TraceJob, index: int, requests: Sequence[TraceRequest] | None = None,
              counters=None) -> dict:
  """Traces and writes shard `index` (the Beam-shaped unit of work); returns its manifest.

  `requests` are the shard's requests (loaded from the source when None);
  `counters(status, n)` is called with the shard's counts (Beam Metrics, logging).
  """
  start = time.perf_counter()
  if requests is None:
    all_requests = _job_requests(job)
    lo, hi = shards.shard_range(index, job.num_shards, len(all_requests))
    requests = all_requests[lo:hi]
  executor = RetryingExecutor(executors.choose_executor(unsandboxed=job.unsandboxed))
  stats = TraceStats()
  results = trace_requests(requests, limits=job.limits, executor=executor,
                           batch_size=job.batch_size, num_workers=1, stats=stats)
  kind = parse_source(job.source).kind
  records = [trace_record(q, r, kind) for q, r in zip(requests, results)]
  manifest = shard_manifest(job, index, stats, time.perf_counter() - start)
  manifest["executor_retries"] = executor.retries
  shards.write_shard(job.out_dir, index, job.num_shards, records, manifest)
  if counters is not None:
    for status, n in stats.statuses.items():
      counters(status, n)
  return manifest


def _job_requests(job: TraceJob) -> list[TraceRequest]:
  requests = load_requests(job.source)
  return requests[:job.limit] if job.limit is not None else requests


def _run_shard_local(args) -> dict:
  job, index, requests = args
  return run_shard(job, index, requests)


def _check_out_dir(job: TraceJob) -> None:
  """A resumed job must be the same job (else its finished shards would be mixed in)."""
  os.makedirs(job.out_dir, exist_ok=True)
  path = os.path.join(job.out_dir, "job.json")
  if os.path.exists(path):
    previous = shards.read_manifest(path)
    if previous != job.identity():
      raise ValueError(f"{job.out_dir} holds shards of another job ({path}: {previous}); "
                       f"this job is {job.identity()}. Use a new --out or delete it.")
  else:
    shards.write_json_atomic(path, job.identity())


def _total(manifests: Sequence[dict]) -> dict:
  stats = TraceStats()
  for m in manifests:
    c = m["counts"]
    stats.statuses.update({s: c[s] for s in ("ok", "too_long", "timeout", "memory", "error")})
    stats.kinds.update(c["kinds"])
    for key, reason in c["examples"].items():
      stats.examples.setdefault(key, reason)
    stats.raised += c["raised"]
    stats.repr_fallbacks += c["repr_fallbacks"]
    stats.events += c["events"]
    stats.num_bytes += c["bytes"]
  return stats.to_dict()


def _run_beam(job: TraceJob, pending: list[int], runner: str, beam_args: Sequence[str],
              num_workers: int) -> None:
  try:
    import apache_beam as beam  # pylint: disable=import-outside-toplevel
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError(f"--runner={runner} needs apache-beam, which is not installed; use "
                     f"--runner={LOCAL_RUNNER}") from None

  def trace_shard(index):
    def count(status, n):
      beam.metrics.Metrics.counter("traces", status).inc(n)
    manifest = run_shard(job, index, counters=count)
    beam.metrics.Metrics.counter("traces", "shards_done").inc()
    logging.info("shard %d done: %s", index, manifest["counts"]["total"])
    return index

  extra = {}
  if runner == "DirectRunner":
    extra["direct_num_workers"] = num_workers
    if num_workers > 1:
      extra["direct_running_mode"] = "multi_processing"
  p = beam.Pipeline(options=PipelineOptions(list(beam_args), runner=runner, **extra))
  _ = (p | "ShardIds" >> beam.Create(pending) | "Spread" >> beam.Reshuffle()
       | "TraceAndWrite" >> beam.Map(trace_shard))
  result = p.run()
  result.wait_until_finish()
  try:
    counters = result.metrics().query(
        beam.metrics.MetricsFilter().with_namespace("traces"))["counters"]
    logging.info("beam counters: %s", {c.key.metric.name: c.committed for c in counters})
  except Exception as e:  # pylint: disable=broad-except  (metrics are optional per runner)
    logging.info("beam metrics unavailable on %s: %s", runner, e)


def run_job(job: TraceJob, *, runner: str = LOCAL_RUNNER, num_workers: int = 1,
            beam_args: Sequence[str] = ()) -> dict:
  """Runs (or resumes) the job; writes and returns the job manifest."""
  if job.num_shards < 1:
    raise ValueError(f"--num_shards={job.num_shards}: expected a positive integer")
  parse_source(job.source)
  if runner != LOCAL_RUNNER:
    try:
      import apache_beam  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      raise ValueError(f"--runner={runner} needs apache-beam, which is not installed; use "
                       f"--runner={LOCAL_RUNNER}") from None
  _check_out_dir(job)
  requests = _job_requests(job)
  pending = [k for k in range(job.num_shards)
             if not shards.is_finished(job.out_dir, k, job.num_shards)]
  logging.info("%s: %d requests in %d shards, %d to do (%d finished)", job.source,
               len(requests), job.num_shards, len(pending), job.num_shards - len(pending))
  start = time.perf_counter()
  if pending and runner == LOCAL_RUNNER:
    work = []
    for k in pending:
      lo, hi = shards.shard_range(k, job.num_shards, len(requests))
      work.append((job, k, requests[lo:hi]))
    done = 0
    if num_workers <= 1:
      results = map(_run_shard_local, work)
    else:
      pool = concurrent.futures.ProcessPoolExecutor(
          num_workers, mp_context=multiprocessing.get_context("spawn"))
      results = pool.map(_run_shard_local, work)
    try:
      for manifest in results:
        done += manifest["counts"]["total"]
        rate = done / max(time.perf_counter() - start, 1e-9)
        logging.info("shard %d done (%s): %s; %d requests in %.1f s, %.1f traces/s",
                     manifest["shard"], manifest["array_record"],
                     {s: manifest["counts"][s] for s in ("ok", "too_long", "timeout", "memory",
                                                         "error")}, done,
                     time.perf_counter() - start, rate)
    finally:
      if num_workers > 1:
        pool.shutdown()
  elif pending:
    _run_beam(job, pending, runner, beam_args, num_workers)
  manifests = [shards.read_manifest(shards.shard_paths(job.out_dir, k, job.num_shards)["manifest"])
               for k in range(job.num_shards)]
  total = _total(manifests)
  if total["total"] != len(requests):
    raise RuntimeError(f"the shards hold {total['total']} records but the source has "
                       f"{len(requests)}")
  total["executor_retries"] = sum(m.get("executor_retries", 0) for m in manifests)
  manifest = {"job": job.identity(), "num_records": len(requests), "total": total,
              "shards": manifests, "recomputed_shards": pending}
  shards.write_json_atomic(os.path.join(job.out_dir, shards.JOB_MANIFEST), manifest)
  return manifest


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m data_pipelines.generate.traces",
                               description=__doc__.split("\n")[0])
  ap.add_argument("--source", required=True, help=SPEC_HELP)
  ap.add_argument("--out", required=True, help="output directory (re-running resumes)")
  ap.add_argument("--num_shards", type=int, default=8)
  ap.add_argument("--runner", default="DirectRunner",
                  help=f"a Beam runner (DirectRunner, DataflowRunner, ...) or {LOCAL_RUNNER} "
                       "(a plain process pool, no Beam)")
  ap.add_argument("--direct_num_workers", type=int, default=2,
                  help="worker processes (local runner and Beam's DirectRunner)")
  ap.add_argument("--batch_size", type=int, default=64, help="programs per tracer process")
  ap.add_argument("--limit", type=int, default=None, help="trace only the first N records")
  ap.add_argument("--unsandboxed", action="store_true", help="trusted code only: no sandbox")
  ap.add_argument("--timeout_s", type=float, default=TraceLimits.timeout_s)
  ap.add_argument("--memory_mb", type=int, default=TraceLimits.memory_mb)
  ap.add_argument("--max_events", type=int, default=TraceLimits.max_events)
  ap.add_argument("--max_bytes", type=int, default=TraceLimits.max_bytes)
  args, beam_args = ap.parse_known_args(argv)
  if beam_args and args.runner == LOCAL_RUNNER:
    ap.error(f"unknown arguments {beam_args} (options other than these pass through to Beam "
             "runners only)")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  logging.getLogger("apache_beam").setLevel(logging.WARNING)  # per-bundle worker chatter
  job = TraceJob(args.source, args.out, args.num_shards,
                 TraceLimits(args.max_events, args.max_bytes, args.timeout_s, args.memory_mb),
                 args.batch_size, args.limit, args.unsandboxed)
  try:
    manifest = run_job(job, runner=args.runner, num_workers=args.direct_num_workers,
                       beam_args=beam_args)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  total = manifest["total"]
  print(json.dumps({k: total[k] for k in ("total", "ok", "too_long", "timeout", "memory",
                                          "error", "kinds")}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
