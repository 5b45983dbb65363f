"""SandboxConfig: the limits every job runs under and the executor that enforces them."""

from __future__ import annotations

import dataclasses
import math

EXECUTORS = ("bwrap", "unsandboxed")

# The program's environment (plus the job's `env`); nothing leaks from the host's.
DEFAULT_ENV = (
    ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    ("LANG", "C.UTF-8"),
    ("PYTHONDONTWRITEBYTECODE", "1"),
)


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
  """Limits and executor for sandboxed jobs (per-call `timeout_s`/`memory_mb` override).

  executor: "bwrap" (bubblewrap; refuses to run when it is missing) or
    "unsandboxed" (a plain subprocess with the same rlimits and protocol, for trusted
    code on machines without bubblewrap; logs a loud warning whenever one is created).
  timeout_s: wall-clock limit; the whole process tree is killed when it passes.
  cpu_s: RLIMIT_CPU of each process (None: ceil(timeout_s) + 1).
  memory_mb: RLIMIT_AS of each process (address space, so a bit above the real need).
  max_processes: RLIMIT_NPROC, counted per sandbox (its own user namespace).
  max_open_files / max_file_mb: RLIMIT_NOFILE / RLIMIT_FSIZE.
  workdir_mb: size of the sandbox's private tmpfs (/tmp, holding the work dir).
  output_limit_bytes: cap on each of stdout and stderr (the rest is dropped, marked).
  payload_limit_bytes: cap on the JSON payload of `run_python_json`.
  python: interpreter inside the sandbox; "auto" is this interpreter when the
    sandbox user can execute it, else the same X.Y found in a world-readable place.
  fork_python: run Python jobs in a fork of the warm runner (fast; shares the
    runner's imported stdlib modules) rather than exec'ing a fresh interpreter.
  unix_sockets: allow socket(AF_UNIX) (off: a seccomp filter refuses it, since the
    network namespace does not cover sockets bound on the host filesystem; see seccomp.py).
  hash_seed: PYTHONHASHSEED inside (fixed by default so traces are deterministic).
  sandbox_uid / sandbox_gid: identity of the program; when the host runs as root,
    bubblewrap itself is started as this user, so the program has no host-root
    file access and RLIMIT_NPROC applies (the kernel exempts uid 0 from it).
  grace_s: extra host-side wait beyond the timeout before the runner is presumed
    hung and killed.
  """
  executor: str = "bwrap"
  timeout_s: float = 10.0
  cpu_s: float | None = None
  memory_mb: int = 2048
  max_processes: int = 64
  max_open_files: int = 256
  max_file_mb: int = 64
  workdir_mb: int = 256
  output_limit_bytes: int = 1 << 20
  payload_limit_bytes: int = 64 << 20
  python: str = "auto"
  fork_python: bool = True
  unix_sockets: bool = False
  hash_seed: int | None = 0
  env: tuple[tuple[str, str], ...] = DEFAULT_ENV
  bwrap: str = "bwrap"
  sandbox_uid: int = 65534
  sandbox_gid: int = 65534
  startup_timeout_s: float = 30.0
  grace_s: float = 5.0

  def __post_init__(self):
    if self.executor not in EXECUTORS:
      raise ValueError(f"SandboxConfig.executor={self.executor!r}; expected one of {EXECUTORS}")
    for name in ("timeout_s", "memory_mb", "max_processes", "max_open_files", "max_file_mb",
                 "workdir_mb", "output_limit_bytes", "payload_limit_bytes",
                 "startup_timeout_s"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"SandboxConfig.{name}={value!r}; expected a positive number")
    if self.cpu_s is not None and self.cpu_s <= 0:
      raise ValueError(f"SandboxConfig.cpu_s={self.cpu_s!r}; expected a positive number or None")
    if self.grace_s < 0:
      raise ValueError(f"SandboxConfig.grace_s={self.grace_s!r}; expected >= 0")
    if self.hash_seed is not None and not 0 <= self.hash_seed <= 4294967295:
      raise ValueError(f"SandboxConfig.hash_seed={self.hash_seed!r}; expected 0..2**32-1 or None")

  def cpu_limit_s(self, timeout_s: float) -> int:
    """RLIMIT_CPU for a job with this wall timeout."""
    return int(math.ceil(self.cpu_s if self.cpu_s is not None else timeout_s + 1))
