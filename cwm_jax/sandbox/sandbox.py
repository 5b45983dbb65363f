"""Sandbox: a fresh sandbox (bwrap + runner) per job, and the job methods shared with
SandboxPool (`run_python`, `run_python_json`, `run_bash`)."""

from __future__ import annotations

import abc

import logging
import threading
from collections.abc import Mapping, Sequence

from cwm_jax.sandbox.config import SandboxConfig
from cwm_jax.sandbox.job import RESULT_FD, Job, make_job
from cwm_jax.sandbox.launch import find_bwrap
from cwm_jax.sandbox.result import ExecResult
from cwm_jax.sandbox.worker import Worker

log = logging.getLogger("cwm_jax.sandbox")

_UNSANDBOXED_WARNING = (
    "!!! UNSANDBOXED EXECUTOR: programs run as plain subprocesses of this process, with "
    "rlimits and timeouts but NO filesystem, network, process or user isolation. Use it "
    "only for trusted code; install bubblewrap (`apt-get install -y bubblewrap`) and keep "
    "SandboxConfig(executor='bwrap') for anything model-written. !!!")

_probed: set[SandboxConfig] = set()
_probe_lock = threading.Lock()


def check_executor(config: SandboxConfig) -> None:
  """Refuse a missing bubblewrap (SandboxUnavailableError); shout about unsandboxed runs."""
  if config.executor == "unsandboxed":
    log.warning(_UNSANDBOXED_WARNING)
  else:
    find_bwrap(config)


def probe(config: SandboxConfig) -> None:
  """Start and stop one runner (once per config) so set-up problems surface early."""
  with _probe_lock:
    if config in _probed:
      return
    worker = Worker(config)
    try:
      worker.start()
    finally:
      worker.close()
    _probed.add(config)


class Executor(abc.ABC):
  """The job methods; subclasses provide `config` and `run(job)`."""

  config: SandboxConfig

  @abc.abstractmethod
  def run(self, job: Job) -> ExecResult:
    """Runs one job and returns its result (never raises for the job's own failures)."""

  def run_python(self, code: str, *, stdin: str | bytes = "", timeout_s: float | None = None,
                 memory_mb: int | None = None, files: Mapping[str, str | bytes] | None = None,
                 args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> ExecResult:
    """Run `code` as `python main.py *args` in a fresh work dir holding `files`."""
    return self.run(make_job("python", code, self.config, stdin=stdin, timeout_s=timeout_s,
                             memory_mb=memory_mb, files=files, args=args, env=env))

  def run_python_json(self, code: str, *, stdin: str | bytes = "",
                      timeout_s: float | None = None, memory_mb: int | None = None,
                      files: Mapping[str, str | bytes] | None = None, args: Sequence[str] = (),
                      env: Mapping[str, str] | None = None) -> ExecResult:
    """Like run_python, and the program writes one JSON document to fd 3 (RESULT_FD, also
    in $CWM_RESULT_FD), e.g. `with open(3, "w") as f: json.dump(x, f)`; it comes back
    parsed as `result.payload`, apart from the program's own stdout."""
    return self.run(make_job("python", code, self.config, stdin=stdin, timeout_s=timeout_s,
                             memory_mb=memory_mb, files=files, args=args, env=env,
                             want_payload=True))

  def run_bash(self, script: str, *, stdin: str | bytes = "", timeout_s: float | None = None,
               memory_mb: int | None = None, files: Mapping[str, str | bytes] | None = None,
               args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> ExecResult:
    """Run `bash -c script bash *args` in a fresh work dir holding `files`."""
    return self.run(make_job("bash", script, self.config, stdin=stdin, timeout_s=timeout_s,
                             memory_mb=memory_mb, files=files, args=args, env=env))


class Sandbox(Executor):
  """Each job in a brand-new sandbox (bwrap + interpreter start-up every time).

  Construction checks that the executor works (SandboxUnavailableError if not).
  Thread-safe; for many short jobs SandboxPool is several times faster.
  """

  def __init__(self, config: SandboxConfig | None = None):
    self.config = config or SandboxConfig()
    check_executor(self.config)
    probe(self.config)

  def run(self, job: Job) -> ExecResult:
    worker = Worker(self.config)
    try:
      worker.start()
    except Exception as e:  # transient: the probe passed  # noqa: BLE001
      worker.kill()
      return ExecResult.failure(f"could not start the sandbox: {e}", executor=self.config.executor)
    try:
      return worker.execute(job)
    finally:
      worker.close()


__all__ = ["Executor", "Sandbox", "RESULT_FD", "check_executor", "probe"]
