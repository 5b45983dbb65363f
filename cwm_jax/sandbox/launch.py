"""How a runner process starts: the bubblewrap command line (or the plain, unsandboxed
one), the host identity it runs as, and the Python interpreter inside it.

Isolation under bubblewrap:
  filesystem  `/` bound read-only; private tmpfs on /tmp (size-capped, holds the work
              dir /tmp/work) and /run (hides host sockets); fresh minimal /dev and a
              /proc of the sandbox's own pid namespace.
  namespaces  --unshare-all: user, pid, net (only a loopback), ipc, uts, cgroup;
              --disable-userns so the program cannot nest user namespaces.
  identity    uid/gid 65534 inside. When the host runs as root, bwrap itself is
              started as 65534: with bwrap run by root, `--uid 65534` would still be
              host uid 0 to the kernel (owner of root's 0600 files, and exempt from
              RLIMIT_NPROC). As 65534 the program has no host-root file access, and its
              process count is kept per sandbox by the user namespace.
  privileges  --cap-drop ALL, no_new_privs (bwrap always sets it: setuid binaries
              do not elevate), --new-session (no terminal injection), and a seccomp
              filter refusing Unix sockets and io_uring (seccomp.py).
  lifetime    --die-with-parent, and the runner is PID 1 (`--as-pid-1`), so killing
              the bwrap process on the host tears down the whole pid namespace.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from cwm_jax.sandbox.config import SandboxConfig
from cwm_jax.sandbox.errors import INSTALL_HINT, SandboxUnavailableError
from cwm_jax.sandbox.seccomp import unix_socket_filter

log = logging.getLogger("cwm_jax.sandbox")

RUNNER_SOURCE = Path(__file__).with_name("runner.py").read_text()
SANDBOX_TMP = "/tmp"  # the private tmpfs inside bwrap; jobs run in /tmp/work


@dataclasses.dataclass(frozen=True)
class Launch:
  """Everything `subprocess.Popen` needs to start one runner."""
  argv: tuple[str, ...]
  env: dict
  cwd: str
  user: int | None  # host uid to switch to before exec (root hosts only)
  group: int | None
  host_dir: str | None  # unsandboxed work root on the host, removed when the runner ends


def find_bwrap(config: SandboxConfig) -> str:
  path = shutil.which(config.bwrap)
  if path is None:
    raise SandboxUnavailableError(
        f"bubblewrap ({config.bwrap!r}) was not found on PATH, and the sandbox refuses to "
        f"run untrusted code without it. {INSTALL_HINT}")
  return path


_REQUIRED = ("--unshare-all", "--cap-drop", "--die-with-parent", "--new-session", "--as-pid-1",
             "--clearenv", "--seccomp")
_OPTIONAL = ("--size", "--disable-userns")  # newer bubblewraps; without them: a warning


@functools.lru_cache(maxsize=None)
def bwrap_options(bwrap: str) -> frozenset[str]:
  """The options this bubblewrap understands (from its --help), so older ones still work."""
  try:
    text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
  except (OSError, subprocess.TimeoutExpired) as e:
    raise SandboxUnavailableError(f"could not run {bwrap} --help: {e}") from e
  options = frozenset(re.findall(r"--[a-z0-9-]+", text))
  missing = [o for o in _REQUIRED if o not in options]
  if missing:
    raise SandboxUnavailableError(
        f"{bwrap} is too old (it lacks {', '.join(missing)}); {INSTALL_HINT}")
  for option in _OPTIONAL:
    if option not in options:
      log.warning("%s lacks %s: %s", bwrap, option,
                  "the sandbox's /tmp is not size-capped" if option == "--size"
                  else "programs may create nested user namespaces")
  return options


def host_identity(config: SandboxConfig) -> tuple[int | None, int | None]:
  """(uid, gid) to start bwrap as: the sandbox user when we are root, else unchanged."""
  if os.geteuid() == 0:
    return config.sandbox_uid, config.sandbox_gid
  return None, None


def _reachable_by_others(path: str) -> bool:
  """Can a user with no relation to the file's owner execute `path`?"""
  try:
    real = os.path.realpath(path)
    if not os.stat(real).st_mode & stat.S_IXOTH:
      return False
    parent = os.path.dirname(real)
    while True:
      if not os.stat(parent).st_mode & stat.S_IXOTH:
        return False
      if parent == "/":
        return True
      parent = os.path.dirname(parent)
  except OSError:
    return False


def sandbox_python(config: SandboxConfig, uid: int | None) -> str:
  """The interpreter to run inside (see SandboxConfig.python)."""
  if config.python != "auto":
    return config.python
  if uid is None or _reachable_by_others(sys.executable):
    return sys.executable
  version = f"python{sys.version_info.major}.{sys.version_info.minor}"
  dirs = ["/usr/local/bin", "/usr/bin"] + os.environ.get("PATH", "").split(os.pathsep)
  for directory in dirs:
    candidate = os.path.join(directory, version)
    if directory and os.path.isfile(candidate) and _reachable_by_others(candidate):
      return candidate
  raise SandboxUnavailableError(
      f"this interpreter ({sys.executable}) is not executable by the sandbox user "
      f"{uid} (a parent directory is private) and no world-executable {version} was found "
      "in /usr/local/bin, /usr/bin or PATH; pass SandboxConfig(python=<path>) with an "
      "interpreter outside private directories")


def _runner_env(config: SandboxConfig) -> dict:
  env = dict(config.env)
  if config.hash_seed is not None:
    env["PYTHONHASHSEED"] = str(config.hash_seed)
  return env


def seccomp_program(config: SandboxConfig) -> bytes | None:
  """The filter bwrap should load (None: none wanted, or unknown on this machine)."""
  if config.executor != "bwrap" or config.unix_sockets:
    return None
  program = unix_socket_filter()
  if program is None:
    log.warning("no seccomp filter for this machine: Unix sockets on the host filesystem "
                "stay reachable from the sandbox")
  return program


def bwrap_launch(config: SandboxConfig, seccomp_fd: int | None) -> Launch:
  bwrap = find_bwrap(config)
  user, group = host_identity(config)
  python = sandbox_python(config, user)
  options = bwrap_options(bwrap)
  size = ["--size", str(config.workdir_mb << 20)] if "--size" in options else []
  no_userns = ["--disable-userns"] if "--disable-userns" in options else []
  argv = [
      bwrap,
      "--ro-bind", "/", "/",
      "--dev", "/dev",
      "--proc", "/proc",
      "--tmpfs", "/run",
      *size, "--tmpfs", SANDBOX_TMP,
      "--unshare-all", "--unshare-user", *no_userns,
      "--uid", str(config.sandbox_uid), "--gid", str(config.sandbox_gid),
      "--hostname", "sandbox",
      "--cap-drop", "ALL",
      "--die-with-parent", "--new-session", "--as-pid-1",
      "--chdir", SANDBOX_TMP,
      "--clearenv",
  ]
  for key, value in _runner_env(config).items():
    argv += ["--setenv", key, value]
  if seccomp_fd is not None:
    argv += ["--seccomp", str(seccomp_fd)]
  settings = {"work_root": SANDBOX_TMP, "scrub": ["/dev/shm"]}
  argv += ["--", python, "-s", "-c", RUNNER_SOURCE, json.dumps(settings)]
  return Launch(argv=tuple(argv), env={"PATH": os.environ.get("PATH", os.defpath)}, cwd="/",
                user=user, group=group, host_dir=None)


def unsandboxed_launch(config: SandboxConfig) -> Launch:
  """A plain subprocess with the same runner: rlimits and timeouts, but NO isolation."""
  python = sys.executable if config.python == "auto" else config.python
  host_dir = tempfile.mkdtemp(prefix="cwm-unsandboxed-")
  settings = {"work_root": host_dir, "scrub": []}
  argv = (python, "-s", "-c", RUNNER_SOURCE, json.dumps(settings))
  return Launch(argv=argv, env=_runner_env(config), cwd=host_dir, user=None, group=None,
                host_dir=host_dir)


def make_launch(config: SandboxConfig, seccomp_fd: int | None = None) -> Launch:
  """seccomp_fd: a readable fd holding seccomp_program(config), passed on to bwrap."""
  if config.executor == "unsandboxed":
    return unsandboxed_launch(config)
  return bwrap_launch(config, seccomp_fd)
