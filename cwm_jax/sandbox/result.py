"""ExecResult: what one sandboxed job did, parsed from the runner's JSON reply."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

_FIELDS = {  # wire name -> accepted JSON types
    "stdout": (str,), "stderr": (str,), "exit_code": (int, type(None)),
    "signal": (int, type(None)), "timed_out": (bool,), "memory_exceeded": (bool,),
    "output_truncated": (bool,), "wall_s": (int, float), "cpu_s": (int, float, type(None)),
    "max_rss_mb": (int, float, type(None)),
}


@dataclasses.dataclass(frozen=True)
class ExecResult:
  """Outcome of one job.

  exit_code follows `subprocess`: the exit status, or -N when killed by signal N
  (also in `signal`); None when the harness failed (`sandbox_error` says why).
  timed_out: the wall-clock or CPU-time limit was hit and the tree was killed.
  memory_exceeded: the program died of MemoryError / allocation failure.
  output_truncated: stdout or stderr went past the cap; the rest was dropped.
  wall_s / cpu_s: the program's own time (sandbox start-up excluded); cpu_s sums
  every process of the job. max_rss_mb: peak RSS of the main process.
  payload: the JSON value the program wrote to its result fd (`run_python_json`);
  payload_error says why there is none (nothing written, bad JSON, too large).
  """
  stdout: str
  stderr: str
  exit_code: int | None
  timed_out: bool = False
  memory_exceeded: bool = False
  output_truncated: bool = False
  wall_s: float = 0.0
  cpu_s: float | None = None
  max_rss_mb: float | None = None
  signal: int | None = None
  payload: Any = None
  payload_error: str | None = None
  sandbox_error: str | None = None
  executor: str = "bwrap"

  @property
  def ok(self) -> bool:
    """Exited 0 within every limit, and the harness worked."""
    return self.exit_code == 0 and not self.timed_out and self.sandbox_error is None

  @classmethod
  def from_reply(cls, reply: dict, *, executor: str, want_payload: bool) -> "ExecResult":
    """Validate the runner's reply (plain JSON data) and build a result."""
    fields = {}
    for name, types in _FIELDS.items():
      value = reply.get(name)
      if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ValueError(f"runner reply field {name!r}={value!r:.80}; expected {types}")
      fields[name] = value
    payload, payload_error = None, None
    if want_payload:
      payload, payload_error = _parse_payload(reply.get("payload"), reply.get("payload_truncated"))
    return cls(**fields, payload=payload, payload_error=payload_error, executor=executor)

  @classmethod
  def failure(cls, message: str, *, executor: str, timed_out: bool = False,
              wall_s: float = 0.0, stderr: str = "") -> "ExecResult":
    """A result for a job the harness could not run to completion."""
    return cls(stdout="", stderr=stderr, exit_code=None, timed_out=timed_out, wall_s=wall_s,
               sandbox_error=message, executor=executor)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _parse_payload(text, truncated) -> tuple[Any, str | None]:
  if truncated:
    return None, "payload exceeded payload_limit_bytes and was dropped"
  if not text:
    return None, "the program wrote no payload to its result fd"
  try:
    return json.loads(text), None
  except json.JSONDecodeError as e:
    return None, f"payload is not valid JSON: {e}"
