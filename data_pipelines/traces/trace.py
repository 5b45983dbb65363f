"""Trace programs: requests -> tracer process(es) -> validated `Trace`s, and the CLI.

    python -m data_pipelines.traces.trace CONTEXT_FILE [--stdin FILE] [--readable]
    python -m data_pipelines.traces.trace --competitive SOLUTION.py --stdin INPUT.txt

prints the trace text of a context file (its entry `def` line ends with
`  # << START_OF_TRACE`), or with --competitive of a solution program. Programs run
in cwm_jax.sandbox; pass --unsandboxed to run trusted code without it.

Requests are traced in batches: one tracer process per batch (tracer_program.py), one
forked child per request inside it. Its output goes through the same parser as
trace text (strict), so every ok result is canonical and `format_trace` reproduces the
text the limits were measured on. A request whose process died is reported from the
executor's status and the rest of its batch is retried in a fresh process.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import sys
from collections.abc import Sequence

from cwm_jax.tokenizer import special_tokens as st
from data_pipelines.traces import executors
from data_pipelines.traces import tracer_program as tp
from data_pipelines.traces.format import format_trace, format_trace_readable
from data_pipelines.traces.frames import Trace
from data_pipelines.traces.parse import TraceParseError, parse_items
from data_pipelines.traces.sources import TraceRequest, competitive_request
from data_pipelines.traces.stats import TraceStats


@dataclasses.dataclass(frozen=True)
class TraceLimits:
  """Rule 8: longer traces are dropped as too_long; time and memory are per program."""
  max_events: int = 10_000
  max_bytes: int = 1_000_000  # UTF-8 bytes of the whole text: prompt, frames, <|end_of_text|>
  timeout_s: float = 10.0
  memory_mb: int = 1024


@dataclasses.dataclass(frozen=True)
class TraceResult:
  """The outcome of one request; `trace` is set only when `status == "ok"`."""
  id: str
  status: str  # ok | too_long | timeout | memory | error
  kind: str = ""  # short reason key for counting, e.g. "max_events", "context_error"
  reason: str = ""
  trace: Trace | None = None
  stdout: str = ""  # what the program printed (first MiB)
  exception: str | None = None  # repr of an exception that left the entry function
  num_bytes: int = 0
  repr_fallbacks: int = 0

  @property
  def ok(self) -> bool:
    return self.status == "ok"


_MAIN_GUARD = 'if __name__ == "__main__":\n  main()\n'


def tracer_source() -> str:
  """The tracer program as shipped to the executor: tracer_program.py calling main()
  unconditionally (an executor may run it under a name other than __main__)."""
  with open(tp.__file__, encoding="utf-8") as f:
    text = f.read()
  if not text.endswith(_MAIN_GUARD):
    raise RuntimeError(f"{tp.__file__} must end with {_MAIN_GUARD!r}")
  return text[:-len(_MAIN_GUARD)] + "main()\n"


def _wire_trace(context: str, frames: list) -> Trace:
  """The tracer's frames -> Trace, through the parser (strict) for validation."""
  lines = tp.context_lines(context)
  items = [(st.BOS, st.BOS, 0), (st.TRACE_CONTEXT_START, st.TRACE_CONTEXT_START, 0)]
  if context:
    items.append((None, context, 0))
  items.append((st.FRAME_SEP, st.FRAME_SEP, 0))
  for i, (event, lineno, payload) in enumerate(frames):
    sep, line = tp.EVENT_SEP[event], tp.source_line(lines, lineno)
    if event in ("call", "line"):
      items += [(sep, sep, i), (None, payload, i), (st.ACTION_SEP, st.ACTION_SEP, i),
                (None, line, i), (st.FRAME_SEP, st.FRAME_SEP, i)]
    else:
      items += [(sep, sep, i), (st.ACTION_SEP, st.ACTION_SEP, i), (None, line, i),
                (st.ARG_SEP, st.ARG_SEP, i), (None, payload, i), (st.FRAME_SEP, st.FRAME_SEP, i)]
  items.append((st.EOS, st.EOS, len(frames)))
  trace = parse_items(items)
  return dataclasses.replace(trace, frames=tuple(
      dataclasses.replace(f, lineno=w[1]) for f, w in zip(trace.frames, frames)))


def _to_result(request: TraceRequest, raw: dict) -> TraceResult:
  fields = dict(id=request.id, status=raw["status"], kind=raw.get("kind", ""),
                reason=raw.get("reason", ""), stdout=raw.get("stdout", ""),
                exception=raw.get("exception"), num_bytes=raw.get("num_bytes", 0),
                repr_fallbacks=raw.get("repr_fallbacks", 0))
  if raw["status"] != "ok":
    return TraceResult(**fields)
  try:
    trace = _wire_trace(request.context, raw["frames"])
    size = len(format_trace(trace).encode("utf-8"))
    if size != raw["num_bytes"]:
      raise TraceParseError(f"the tracer measured {raw['num_bytes']} bytes, the text has {size}")
  except ValueError as e:  # TraceParseError included
    return TraceResult(**{**fields, "status": "error", "kind": "invalid_trace",
                          "reason": f"tracer output failed validation: {e}"})
  return TraceResult(**fields, trace=trace)


def _check_python(raw: dict) -> None:
  """Traces need the tracer's Python to be 3.11 (FORMATS.md rules 6-7) and this one's."""
  here = "%d.%d" % sys.version_info[:2]
  there = raw.get("python", "")
  if raw.get("kind") == "python_version":
    raise RuntimeError(raw["reason"])
  if there:
    wrong = tp.python_version_error(tuple(int(p) for p in there.split(".")[:3]))
    if wrong is not None:
      raise RuntimeError(wrong)
  if there and not there.startswith(here + "."):
    raise RuntimeError(f"the tracer ran Python {there} but this project runs Python {here}; "
                       "line events differ between versions (FORMATS.md rule 7), so traces must "
                       "be made by the same version")


def _run_batch(requests: Sequence[TraceRequest], limits: TraceLimits,
               executor: executors.Executor) -> list[TraceResult]:
  items = [{"context": r.context, "stdin": r.stdin} for r in requests]
  raws = run_tracer_items(items, limits, executor)
  return [_to_result(request, raw) for request, raw in zip(requests, raws)]


def run_tracer_items(items: Sequence[dict], limits: TraceLimits, executor: executors.Executor,
                     extra: dict | None = None) -> list[dict]:
  """Runs tracer-program items in as few processes as possible; returns one raw result
  dict per item (tracer_program.py's protocol). An item whose process died gets a dict
  with only status/kind/reason, and the rest are retried in a fresh process. `extra`
  adds request fields (e.g. "repo_files")."""
  program = tracer_source()
  results: dict[int, dict] = {}
  pending = list(range(len(items)))
  while pending:
    payload = json.dumps({
        "items": [items[i] for i in pending],
        "max_events": limits.max_events, "max_bytes": limits.max_bytes,
        "timeout_s": limits.timeout_s, "memory_mb": limits.memory_mb,
        "max_output_bytes": getattr(executor, "output_limit_bytes", None), **(extra or {})})
    out = executor(program, stdin=payload, timeout_s=len(pending) * (limits.timeout_s + 1) + 30,
                   memory_mb=limits.memory_mb + 512)
    done, stopped = 0, False
    for line in out.stdout.splitlines():
      try:
        raw = json.loads(line)
      except ValueError:
        break  # a line cut off when the process was killed
      if raw.get("index") != done:
        break
      if "stopped" in raw:  # output budget used up: the rest goes to a fresh process
        stopped = True
        break
      _check_python(raw)
      results[pending[done]] = raw
      done += 1
    if done == len(pending):
      break
    if stopped and done:
      pending = pending[done:]
      continue
    # The process ended during item pending[done]: report it, retry the rest.
    culprit = pending[done]
    if out.timed_out:
      status, kind, reason = "timeout", "timeout", "the tracer process timed out"
    elif out.memory_exceeded:
      status, kind, reason = "memory", "memory", "the tracer process exceeded its memory limit"
    elif out.exit_code == 0:
      status, kind = "error", "output_cut"
      reason = "the tracer finished but its output was cut off (executor output limit?)"
    else:
      status, kind = "error", "process_died"
      reason = (f"the tracer process ended (exit code {out.exit_code}); stderr: "
                f"{out.stderr.strip()[-500:]}")
    failed = {"status": status, "kind": kind, "reason": reason}
    if kind == "process_died" and done == 0:
      # Items run in forked children, so a tracer that dies before its first result
      # failed to start (e.g. a broken executor): the same would happen to every retry.
      for i in pending:
        results[i] = dict(failed)
      break
    results[culprit] = failed
    pending = pending[done + 1:]
  return [results[i] for i in range(len(items))]


def trace_requests(requests: Sequence[TraceRequest], *, limits: TraceLimits = TraceLimits(),
                   executor: executors.Executor | None = None, batch_size: int = 64,
                   num_workers: int = 1, stats: TraceStats | None = None) -> list[TraceResult]:
  """Traces each request (in order); dropped ones keep their status and reason.

  `executor` defaults to `executors.choose_executor()` (the sandbox). Batches of
  `batch_size` requests share one tracer process; `num_workers` batches run at once.
  """
  executor = executor or executors.choose_executor()
  requests = list(requests)
  batches = [requests[i:i + batch_size] for i in range(0, len(requests), batch_size)]
  with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
    results = [r for batch in pool.map(lambda b: _run_batch(b, limits, executor), batches)
               for r in batch]
  if stats is not None:
    for r in results:
      stats.add(r)
  return results


def trace_context(context: str, *, stdin: str = "", limits: TraceLimits = TraceLimits(),
                  executor: executors.Executor | None = None) -> TraceResult:
  """Traces one CONTEXT (see `trace_requests`)."""
  return trace_requests([TraceRequest(context, stdin)], limits=limits, executor=executor)[0]


# ---------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m data_pipelines.traces.trace",
                               description=__doc__.split("\n")[0])
  ap.add_argument("file", help="a CONTEXT file (entry def line marked), or with --competitive "
                  "a solution program")
  ap.add_argument("--competitive", action="store_true",
                  help="FILE is a competitive-programming solution; mark its entry")
  ap.add_argument("--stdin", help="file whose text the program reads as stdin")
  ap.add_argument("--readable", action="store_true",
                  help="one frame per line, newlines written as \\n (as in FORMATS.md)")
  ap.add_argument("--unsandboxed", action="store_true",
                  help="run without cwm_jax.sandbox (trusted code only)")
  ap.add_argument("--timeout_s", type=float, default=TraceLimits.timeout_s)
  ap.add_argument("--memory_mb", type=int, default=TraceLimits.memory_mb)
  ap.add_argument("--max_events", type=int, default=TraceLimits.max_events)
  ap.add_argument("--max_bytes", type=int, default=TraceLimits.max_bytes)
  args = ap.parse_args(argv)
  try:
    with open(args.file, encoding="utf-8") as f:
      text = f.read()
    stdin = ""
    if args.stdin:
      with open(args.stdin, encoding="utf-8") as f:
        stdin = f.read()
    request = competitive_request(text, stdin) if args.competitive else TraceRequest(text, stdin)
    executor = executors.choose_executor(unsandboxed=args.unsandboxed)
  except (OSError, ValueError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  limits = TraceLimits(args.max_events, args.max_bytes, args.timeout_s, args.memory_mb)
  result = trace_requests([request], limits=limits, executor=executor)[0]
  if not result.ok:
    print(f"{args.file}: dropped ({result.status}/{result.kind}): {result.reason}",
          file=sys.stderr)
    return 1
  sys.stdout.write(format_trace_readable(result.trace) if args.readable
                   else format_trace(result.trace))
  return 0


if __name__ == "__main__":
  sys.exit(main())
