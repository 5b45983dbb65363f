"""Sandboxed execution of untrusted Python and bash (bubblewrap), with JSON-only results.

    from cwm_jax.sandbox import run_python, SandboxPool
    r = run_python("print(input()[::-1])", stdin="abc", timeout_s=2)   # r.stdout == "cba\\n"
    with SandboxPool(4) as pool:                                          # fork-server, fast
      results = list(ThreadPoolExecutor(4).map(pool.run_python, programs))

Security model and limits: see launch.py (isolation), runner.py (per-job child,
clean-up), config.py (defaults).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from cwm_jax.sandbox.config import SandboxConfig
from cwm_jax.sandbox.errors import SandboxError, SandboxUnavailableError
from cwm_jax.sandbox.job import RESULT_FD, Job, make_job
from cwm_jax.sandbox.pool import SandboxPool
from cwm_jax.sandbox.result import ExecResult
from cwm_jax.sandbox.sandbox import Executor, Sandbox


@functools.lru_cache(maxsize=None)
def default_sandbox(config: SandboxConfig | None = None) -> Sandbox:
  """The shared Sandbox behind the module-level functions (one per config)."""
  return Sandbox(config)


def run_python(code: str, *, stdin: str | bytes = "", timeout_s: float | None = None,
               memory_mb: int | None = None, files: Mapping[str, str | bytes] | None = None,
               args: Sequence[str] = (), env: Mapping[str, str] | None = None,
               config: SandboxConfig | None = None) -> ExecResult:
  """Run `code` as `python main.py *args` in a fresh sandbox (defaults: 10 s, 2048 MB)."""
  return default_sandbox(config).run_python(code, stdin=stdin, timeout_s=timeout_s,
                                            memory_mb=memory_mb, files=files, args=args, env=env)


def run_python_json(code: str, *, stdin: str | bytes = "", timeout_s: float | None = None,
                    memory_mb: int | None = None, files: Mapping[str, str | bytes] | None = None,
                    args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                    config: SandboxConfig | None = None) -> ExecResult:
  """run_python whose program writes a JSON document to fd 3; parsed into `.payload`."""
  return default_sandbox(config).run_python_json(code, stdin=stdin, timeout_s=timeout_s,
                                                 memory_mb=memory_mb, files=files, args=args,
                                                 env=env)


def run_bash(script: str, *, stdin: str | bytes = "", timeout_s: float | None = None,
             memory_mb: int | None = None, files: Mapping[str, str | bytes] | None = None,
             args: Sequence[str] = (), env: Mapping[str, str] | None = None,
             config: SandboxConfig | None = None) -> ExecResult:
  """Run `bash -c script` in a fresh sandbox."""
  return default_sandbox(config).run_bash(script, stdin=stdin, timeout_s=timeout_s,
                                          memory_mb=memory_mb, files=files, args=args, env=env)


__all__ = [
    "ExecResult", "Executor", "Job", "RESULT_FD", "Sandbox", "SandboxConfig", "SandboxError",
    "SandboxPool", "SandboxUnavailableError", "default_sandbox", "make_job", "run_bash",
    "run_python", "run_python_json",
]
