"""SandboxPool: long-lived sandboxed runners that fork a fresh child per job.

Each worker is one bwrap sandbox whose runner (PID 1 inside) forks a child per job,
so a job costs a fork instead of a namespace set-up plus an interpreter start.
Between jobs the runner kills every leftover process and wipes /tmp and /dev/shm.
Thread-safe: call `run_python` & co. from a ThreadPoolExecutor; at most n_workers
jobs run at once and the rest wait for a free worker. A worker that dies (or
retires after a job it could not clean up) is restarted before its next job.

What a warm worker does not reset between jobs: SysV IPC objects of its ipc
namespace, and the runner's own memory, which a forked child inherits (a program
reading raw memory could find traces of earlier jobs' inputs). Where jobs must not
see each other at all, use `fork_python=False` (a fresh interpreter per job) or
`Sandbox` (a fresh sandbox per job).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor

from cwm_jax.sandbox.config import SandboxConfig
from cwm_jax.sandbox.errors import SandboxError, SandboxUnavailableError
from cwm_jax.sandbox.job import Job
from cwm_jax.sandbox.result import ExecResult
from cwm_jax.sandbox.sandbox import Executor, check_executor
from cwm_jax.sandbox.worker import Worker


class SandboxPool(Executor):

  def __init__(self, n_workers: int = 2, config: SandboxConfig | None = None):
    if not isinstance(n_workers, int) or n_workers < 1:
      raise ValueError(f"n_workers={n_workers!r}; expected a positive integer")
    self.config = config or SandboxConfig()
    check_executor(self.config)
    # bwrap --die-with-parent follows the *thread* that started it, so every worker
    # is started from this one long-lived thread, never from a short-lived caller.
    self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cwm-sandbox-spawn")
    self._lock = threading.Lock()
    self._starts = 0
    self._closed = False
    self._workers = [Worker(self.config) for _ in range(n_workers)]
    self._idle: queue.SimpleQueue[Worker] = queue.SimpleQueue()
    try:
      for worker in self._workers:
        self._start(worker)
        self._idle.put(worker)
    except BaseException:
      self.close()
      raise

  @property
  def n_workers(self) -> int:
    return len(self._workers)

  @property
  def worker_starts(self) -> int:
    """How many runners were started, restarts included."""
    with self._lock:
      return self._starts

  @property
  def worker_pids(self) -> list[int | None]:
    """Host pids of the workers' bwrap processes (None where one is down)."""
    return [worker.pid for worker in self._workers]

  def _start(self, worker: Worker) -> None:
    self._spawner.submit(worker.start).result()
    with self._lock:
      self._starts += 1

  def run(self, job: Job) -> ExecResult:
    if self._closed:
      raise SandboxError("this SandboxPool is closed")
    worker = self._idle.get()
    try:
      if self._closed:
        raise SandboxError("this SandboxPool is closed")
      if not worker.alive:
        try:
          self._start(worker)
        except SandboxUnavailableError as e:
          return ExecResult.failure(f"could not restart a sandbox worker: {e}",
                                    executor=self.config.executor)
      return worker.execute(job)
    finally:
      self._idle.put(worker)

  def close(self) -> None:
    """Stop every worker (a job still running gets a result with sandbox_error)."""
    self._closed = True
    for worker in self._workers:
      self._spawner.submit(worker.close).result()
    self._spawner.shutdown(wait=True)

  def __enter__(self) -> "SandboxPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
