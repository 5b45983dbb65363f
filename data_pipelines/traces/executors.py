"""Where the tracer program runs: the sandbox, or (tests only) a plain subprocess.

An executor runs a Python program text with a stdin string and limits, and returns
an `ExecOutput`. `choose_executor` is the one place the backend is chosen.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import warnings
from typing import Protocol

UNSANDBOXED_ENV = "CWM_TRACE_UNSANDBOXED"  # =1 allows the unsandboxed runner


@dataclasses.dataclass(frozen=True)
class ExecOutput:
  stdout: str
  stderr: str
  exit_code: int | None
  timed_out: bool = False
  memory_exceeded: bool = False


class Executor(Protocol):
  """(program, stdin, limits) -> ExecOutput. An optional `output_limit_bytes` attribute
  tells the tracer how much stdout comes back."""

  def __call__(self, program: str, *, stdin: str, timeout_s: float, memory_mb: int
               ) -> ExecOutput:
    ...


def _hash_seed_env() -> dict[str, str]:
  """A small environment: no PYTHON* variables from the host except PYTHONHASHSEED=0."""
  keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
  env = {k: os.environ[k] for k in keep if k in os.environ}
  env["PYTHONHASHSEED"] = "0"
  return env


def unsandboxed_subprocess_executor(program: str, *, stdin: str, timeout_s: float,
                                    memory_mb: int) -> ExecOutput:
  """TEST-ONLY, UNSANDBOXED: runs the program with this Python in a plain subprocess.

  Only the time limit is enforced here (the tracer program sets per-item memory limits
  itself). The traced code can read and write anything this user can: use it for
  trusted programs (tests, development), never for untrusted data.
  """
  del memory_mb
  with tempfile.TemporaryDirectory(prefix="cwm_trace_") as cwd:  # files the program writes
    try:
      proc = subprocess.run([sys.executable, "-s", "-c", program], input=stdin, text=True,
                            capture_output=True, timeout=timeout_s, env=_hash_seed_env(), cwd=cwd)
    except subprocess.TimeoutExpired as e:
      def text(b):
        return b.decode("utf-8", "replace") if isinstance(b, bytes) else (b or "")
      return ExecOutput(text(e.stdout), text(e.stderr), None, timed_out=True)
  return ExecOutput(proc.stdout, proc.stderr, proc.returncode)


SANDBOX_OUTPUT_LIMIT = 64 << 20  # stdout cap asked of the sandbox: room for many traces


def sandbox_executor(program: str, *, stdin: str, timeout_s: float, memory_mb: int
                     ) -> ExecOutput:
  """Runs the program in cwm_jax.sandbox (no network, read-only host, limits)."""
  from cwm_jax import sandbox  # pylint: disable=import-outside-toplevel
  config = sandbox.SandboxConfig(output_limit_bytes=SANDBOX_OUTPUT_LIMIT)
  result = sandbox.run_python(program, stdin=stdin, timeout_s=timeout_s, memory_mb=memory_mb,
                              config=config)
  stderr = result.stderr
  if result.sandbox_error:  # the harness failed (not the program): say why in the counted reason
    stderr = f"{stderr}\n[sandbox error] {result.sandbox_error}".lstrip("\n")
  return ExecOutput(result.stdout, stderr, result.exit_code, result.timed_out,
                    result.memory_exceeded)


# The tracer keeps its output under this (it stops early and the host starts another run).
sandbox_executor.output_limit_bytes = SANDBOX_OUTPUT_LIMIT


def sandbox_available() -> bool:
  """Whether cwm_jax.sandbox can run here, i.e. bubblewrap is installed."""
  from cwm_jax import sandbox  # pylint: disable=import-outside-toplevel
  try:
    sandbox.launch.find_bwrap(sandbox.SandboxConfig())
  except sandbox.SandboxUnavailableError:
    return False
  return True


def choose_executor(*, unsandboxed: bool = False) -> Executor:
  """The one place the backend is chosen.

  `unsandboxed` (or CWM_TRACE_UNSANDBOXED=1 when bubblewrap is missing) picks the
  test-only unsandboxed runner; otherwise cwm_jax.sandbox, or an error without it.
  """
  if not unsandboxed and sandbox_available():
    return sandbox_executor
  if unsandboxed or os.environ.get(UNSANDBOXED_ENV) == "1":
    warnings.warn("tracing WITHOUT a sandbox: trusted code only", RuntimeWarning, stacklevel=2)
    return unsandboxed_subprocess_executor
  raise RuntimeError(
      "Tracing runs programs in cwm_jax.sandbox, which needs bubblewrap "
      "(apt-get install -y bubblewrap). For trusted code "
      f"only, use the unsandboxed runner (unsandboxed=True, {UNSANDBOXED_ENV}=1, or "
      "--unsandboxed on the command line).")
