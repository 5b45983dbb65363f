"""Execution traces, the world-model data of FORMATS.md ("Execution traces").

  tracer_program.py  the tracer run in a separate (sandboxed) process: rules 1-8
  executors.py       where it runs (`choose_executor`: cwm_jax.sandbox, or test-only
                     unsandboxed subprocess)
  trace.py           `trace_requests` / `trace_context` -> `TraceResult`s; the CLI
  frames.py          `CallFrame`, `LineFrame`, `ReturnFrame`, `ExceptionFrame`, `Trace`
  format.py          Trace -> text / token ids (+ loss mask)
  parse.py           text / token ids -> Trace, validating the grammar
  sources.py         CruxEval and competitive-programming programs -> `TraceRequest`s
  stats.py           `TraceStats`: ok / too_long / timeout / memory / error, with reasons
"""
