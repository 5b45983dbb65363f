"""Worker: one runner process on the host side, spoken to in JSON lines over its pipes.

Not thread-safe on its own (one job at a time); `SandboxPool` hands workers out.
The runner enforces each job's limits; the worker only adds a backstop: a runner
that neither answers within timeout + grace_s nor stays alive is killed, and the
job gets an ExecResult with `sandbox_error` set.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time

from cwm_jax.sandbox.config import SandboxConfig
from cwm_jax.sandbox.errors import SandboxUnavailableError
from cwm_jax.sandbox.job import Job, to_wire
from cwm_jax.sandbox.launch import Launch, make_launch, seccomp_program
from cwm_jax.sandbox.result import ExecResult
from cwm_jax.sandbox.runner import descendants


_USERNS_HINT = (
    "\nbubblewrap needs unprivileged user namespaces (it runs as the sandbox user, uid "
    "65534, when the host is root): check `sysctl user.max_user_namespaces` (> 0), "
    "`kernel.unprivileged_userns_clone=1` (Debian), "
    "`kernel.apparmor_restrict_unprivileged_userns=0` (Ubuntu >= 23.10), and that no "
    "container seccomp profile blocks unshare(CLONE_NEWUSER).")


class _NoReply(Exception):
  """The runner closed its pipe (None) or missed the deadline (timed_out=True)."""

  def __init__(self, timed_out: bool):
    super().__init__("timed out" if timed_out else "pipe closed")
    self.timed_out = timed_out


class Worker:

  def __init__(self, config: SandboxConfig):
    self.config = config
    self.hello: dict | None = None
    self._proc: subprocess.Popen | None = None
    self._launch: Launch | None = None
    self._stderr = None
    self._buffer = bytearray()

  @property
  def alive(self) -> bool:
    return self._proc is not None and self._proc.poll() is None

  @property
  def pid(self) -> int | None:
    """Host pid of the bwrap (or unsandboxed runner) process."""
    return self._proc.pid if self.alive else None

  def start(self) -> None:
    """(Re)start the runner; SandboxUnavailableError if it does not say hello."""
    self.kill()
    self._stderr = tempfile.TemporaryFile()
    self._buffer = bytearray()
    seccomp = seccomp_program(self.config)
    pass_fds = ()
    if seccomp is not None:  # bwrap reads the filter from an inherited pipe
      read_end, write_end = os.pipe()
      os.write(write_end, seccomp)
      os.close(write_end)
      pass_fds = (read_end,)
    try:
      self._launch = launch = make_launch(self.config, pass_fds[0] if pass_fds else None)
      extra = {}
      if launch.user is not None:
        extra = dict(user=launch.user, group=launch.group, extra_groups=[])
      self._proc = subprocess.Popen(
          launch.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
          cwd=launch.cwd, env=launch.env, start_new_session=True, close_fds=True,
          pass_fds=pass_fds, **extra)
    except OSError as e:
      self.kill()
      raise SandboxUnavailableError(f"could not start the sandbox runner: {e}") from e
    except BaseException:
      self.kill()
      raise
    finally:
      for fd in pass_fds:
        os.close(fd)
    try:
      hello = self._read_reply(time.monotonic() + self.config.startup_timeout_s)
    except _NoReply as e:
      details = self.stderr_tail() or f"no output ({e})"
      self.kill()
      userns_trouble = any(word in details for word in (
          "namespace", "uid map", "Operation not permitted", "Permission denied"))
      hint = _USERNS_HINT if self.config.executor == "bwrap" and userns_trouble else ""
      raise SandboxUnavailableError(
          f"the sandbox runner did not start ({self.config.executor}): {details}{hint}") from None
    if not hello.get("hello"):
      self.kill()
      raise SandboxUnavailableError(f"unexpected first line from the sandbox runner: {hello!r:.200}")
    self.hello = hello

  def execute(self, job: Job) -> ExecResult:
    """Run one job; harness failures come back as results with `sandbox_error`."""
    executor = self.config.executor
    if not self.alive:
      return ExecResult.failure("the sandbox worker is not running", executor=executor)
    start = time.monotonic()
    message = json.dumps(to_wire(job, self.config)).encode("ascii") + b"\n"
    try:
      self._proc.stdin.write(message)
      self._proc.stdin.flush()
      reply = self._read_reply(start + job.timeout_s + self.config.grace_s)
    except (OSError, _NoReply) as e:
      timed_out = isinstance(e, _NoReply) and e.timed_out
      details = self.stderr_tail()
      self.kill()
      what = ("did not answer within timeout_s + grace_s and was killed" if timed_out
              else "died")
      return ExecResult.failure(f"the sandbox runner {what}" + (f": {details}" if details else ""),
                                executor=executor, timed_out=timed_out,
                                wall_s=time.monotonic() - start)
    if reply.pop("retire", False):
      self.close()
    if "error" in reply:
      return ExecResult.failure(f"sandbox harness error: {reply['error']}", executor=executor)
    try:
      return ExecResult.from_reply(reply, executor=executor, want_payload=job.want_payload)
    except ValueError as e:
      self.kill()
      return ExecResult.failure(f"malformed reply from the sandbox runner: {e}", executor=executor)

  def _read_reply(self, deadline: float) -> dict:
    """One JSON line from the runner, or _NoReply."""
    fd = self._proc.stdout.fileno()
    with selectors.DefaultSelector() as selector:
      selector.register(fd, selectors.EVENT_READ)
      while True:
        end = self._buffer.find(b"\n")
        if end >= 0:
          line = bytes(self._buffer[:end])
          del self._buffer[:end + 1]
          try:
            reply = json.loads(line)
          except ValueError:
            raise _NoReply(timed_out=False) from None
          if not isinstance(reply, dict):
            raise _NoReply(timed_out=False)
          return reply
        remaining = deadline - time.monotonic()
        if remaining <= 0:
          raise _NoReply(timed_out=True)
        if selector.select(remaining):
          chunk = os.read(fd, 1 << 20)
          if not chunk:
            raise _NoReply(timed_out=False)
          self._buffer += chunk

  def stderr_tail(self, limit: int = 2000) -> str:
    """The runner's (or bwrap's) own stderr, for error messages."""
    if self._stderr is None:
      return ""
    try:
      self._stderr.seek(0, os.SEEK_END)
      size = self._stderr.tell()
      self._stderr.seek(max(0, size - limit))
      return self._stderr.read().decode("utf-8", "replace").strip()
    except (OSError, ValueError):
      return ""

  def close(self) -> None:
    """Ask the runner to exit (EOF on its stdin); kill it if it lingers."""
    if self.alive:
      try:
        self._proc.stdin.close()
        self._proc.wait(timeout=2.0)
      except (OSError, subprocess.TimeoutExpired):
        pass
    self.kill()

  def kill(self) -> None:
    """SIGKILL the runner and everything it started; release host resources."""
    proc, self._proc = self._proc, None
    if proc is not None:
      if proc.poll() is None:
        victims = descendants(proc.pid) if self.config.executor == "unsandboxed" else []
        try:
          os.killpg(proc.pid, signal.SIGKILL)  # bwrap dies; --die-with-parent ends the rest
        except (ProcessLookupError, PermissionError):
          pass
        for pid in victims:  # no pid namespace to tear down when unsandboxed
          try:
            os.kill(pid, signal.SIGKILL)
          except (ProcessLookupError, PermissionError):
            pass
      proc.wait()
      for stream in (proc.stdin, proc.stdout):
        try:
          stream.close()
        except OSError:
          pass
    if self._stderr is not None:
      self._stderr.close()
      self._stderr = None
    if self._launch is not None and self._launch.host_dir:
      shutil.rmtree(self._launch.host_dir, ignore_errors=True)
    self._launch = None
