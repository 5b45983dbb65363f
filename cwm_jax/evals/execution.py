"""Run check programs (candidate code + tests) in the sandbox; pass/fail with a reason.

Every program a scorer builds from model output runs here, inside cwm_jax.sandbox
(bubblewrap: no network, read-only host, time and memory limits). A small harness
compiles the program, `exec`s it as `__main__` and only *after* it finished writes
its verdict to the result fd, so a program that exits early (`os._exit(0)`,
`sys.exit()`) does not pass; as in the official harnesses, a program that
deliberately forges the harness's verdict from inside the same interpreter is out
of scope.

Reasons: passed, syntax (does not compile), assertion (an `assert` failed),
exception (any other exception, its type and message in `detail`), timeout,
memory, exit (the process ended without a verdict: os._exit, a crash, a signal),
sandbox_error (the harness itself failed; not the program's fault, reported so it
is never mistaken for a model error).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from cwm_jax.sandbox import Executor, ExecResult, SandboxConfig, SandboxPool

REASONS = ("passed", "syntax", "assertion", "exception", "timeout", "memory", "exit",
           "sandbox_error")
CANDIDATE_FILE = "candidate.py"

_HARNESS = r'''
import json, sys, traceback

def _report(status, detail=""):
  with open(3, "w") as f:
    json.dump({"status": status, "detail": detail[-2000:]}, f)

with open("candidate.py", encoding="utf-8") as f:
  _source = f.read()
try:
  _code = compile(_source, "candidate.py", "exec")
except (SyntaxError, ValueError) as e:
  _report("syntax", f"{type(e).__name__}: {e}")
  sys.exit(1)
try:
  exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
except AssertionError:
  _report("assertion", traceback.format_exc(limit=-3))
  sys.exit(1)
except MemoryError:
  _report("memory", "MemoryError")
  sys.exit(1)
except BaseException as e:
  _report("exception", f"{type(e).__name__}: {str(e)[:500]}")
  sys.exit(1)
_report("passed")
'''


@dataclasses.dataclass(frozen=True)
class CheckResult:
  """The outcome of one check program: `passed` iff reason == "passed"."""
  passed: bool
  reason: str
  detail: str = ""
  wall_s: float = 0.0

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _verdict(result: ExecResult) -> CheckResult:
  wall = round(result.wall_s, 4)
  if result.sandbox_error:
    return CheckResult(False, "sandbox_error", result.sandbox_error, wall)
  if result.timed_out:
    return CheckResult(False, "timeout", "", wall)
  if result.memory_exceeded:
    return CheckResult(False, "memory", result.stderr[-500:], wall)
  payload = result.payload
  if not isinstance(payload, dict) or payload.get("status") not in REASONS:
    return CheckResult(False, "exit", f"exit code {result.exit_code}, no verdict; stderr: "
                       f"{result.stderr[-500:]}", wall)
  status = payload["status"]
  if status == "passed" and result.exit_code != 0:
    return CheckResult(False, "exit", f"exit code {result.exit_code} after the checks", wall)
  return CheckResult(status == "passed", status, str(payload.get("detail", "")), wall)


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
  """Limits of one check program and how many run at once."""
  timeout_s: float = 10.0
  memory_mb: int = 2048
  workers: int = 2

  def __post_init__(self):
    if not self.timeout_s > 0:
      raise ValueError(f"ExecutionConfig.timeout_s={self.timeout_s!r}; expected > 0")
    if not (isinstance(self.memory_mb, int) and self.memory_mb > 0):
      raise ValueError(f"ExecutionConfig.memory_mb={self.memory_mb!r}; expected a positive int")
    if not (isinstance(self.workers, int) and self.workers > 0):
      raise ValueError(f"ExecutionConfig.workers={self.workers!r}; expected a positive int")


def run_checks(programs: Sequence[str], config: ExecutionConfig = ExecutionConfig(), *,
               executor: Executor | None = None) -> list[CheckResult]:
  """Runs each program (in order) in the sandbox and returns its verdict.

  `executor` reuses a SandboxPool/Sandbox; by default a pool of `config.workers`
  warm sandboxes is started for this call and closed after it.
  """
  programs = list(programs)
  if not programs:
    return []

  def run_all(ex: Executor) -> list[CheckResult]:
    def one(program: str) -> CheckResult:
      return _verdict(ex.run_python_json(_HARNESS, files={CANDIDATE_FILE: program},
                                         timeout_s=config.timeout_s,
                                         memory_mb=config.memory_mb))
    with ThreadPoolExecutor(config.workers) as threads:
      return list(threads.map(one, programs))

  if executor is not None:
    return run_all(executor)
  with SandboxPool(min(config.workers, len(programs)), SandboxConfig()) as pool:
    return run_all(pool)
