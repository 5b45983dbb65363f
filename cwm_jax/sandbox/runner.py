"""The job server that runs *inside* the sandbox: JSON lines in, a forked child per job.

Started as `python -s -c <this file's source> <settings JSON>`; stdlib only, it
never imports cwm_jax. It writes a hello line on fd 1, then reads one job per line on
fd 0 and answers one JSON line per job. Each job runs in a child forked from this warm
interpreter: its own session, a fresh work dir, rlimits, a clean environment; stdout,
stderr and the optional JSON payload come back over pipes, each with a size cap.

Under bubblewrap the runner is PID 1 of the sandbox's pid namespace. The kernel drops
signals sent to it from inside (so `kill -9 -1` or `os.kill(os.getppid(), 9)` cannot
take it down), every orphan is reparented to it, and after each job
`kill(-1, SIGKILL)` ends every process left in the sandbox. It is also non-dumpable,
so the programs it runs (same uid) cannot ptrace it or read its /proc files.
"""

import sys

if __name__ == "__main__":
  # `-c` puts the cwd (the writable /tmp) first on sys.path; never import from there.
  sys.path[:] = [p for p in sys.path if p not in ("", ".")]

import binascii  # noqa: E402  (after the sys.path fix on purpose)
import ctypes
import fcntl
import json
import os
import resource
import select
import signal
import stat
import time
import types

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
MAIN_FILE = "main.py"
TAIL_BYTES = 4096
_MEMORY_MARK = b'{"memory_error": true}\n'
_MEMORY_LINES = ("MemoryError", "Cannot allocate memory", "std::bad_alloc",
                 "out of memory")


def _prctl(option, value):
  try:
    ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
  except (OSError, AttributeError):
    pass


def descendants(root: int) -> list[int]:
  """Pids below `root`, from /proc (stdlib only: also used by the host-side worker)."""
  parent_of = {}
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        with open(f"/proc/{name}/stat", "rb") as f:
          parent_of[int(name)] = int(f.read().rsplit(b")", 1)[1].split()[1])
      except (OSError, ValueError, IndexError):
        pass
  found, frontier = [], [root]
  while frontier:
    children = [pid for pid, ppid in parent_of.items() if ppid in frontier]
    found += children
    frontier = children
  return found


class Capture:
  """Bytes read from one pipe: the head up to `limit`, the last TAIL_BYTES, a flag."""

  def __init__(self, limit):
    self.limit, self.size, self.truncated = limit, 0, False
    self.chunks, self.tail = [], b""

  def add(self, data):
    room = self.limit - self.size
    if room > 0:
      self.chunks.append(data[:room])
      self.size += min(room, len(data))
    if len(data) > max(room, 0):
      self.truncated = True
    self.tail = (self.tail + data)[-TAIL_BYTES:]

  def text(self):
    return b"".join(self.chunks).decode("utf-8", "replace")


def _unblob(blob):
  return binascii.a2b_base64(blob["b64"]) if "b64" in blob else blob["text"].encode("utf-8")


def _remove_tree(path):
  """Delete `path` and everything below it, whatever permissions the program left."""
  try:
    st = os.lstat(path)
  except FileNotFoundError:
    return
  if not stat.S_ISDIR(st.st_mode):
    os.unlink(path)
    return
  stack = [path]
  while stack:
    top = stack[-1]
    os.chmod(top, 0o700)
    subdirs = []
    with os.scandir(top) as entries:
      for entry in entries:
        if entry.is_dir(follow_symlinks=False):
          subdirs.append(entry.path)
        else:
          os.unlink(entry.path)
    if subdirs:
      stack.extend(subdirs)
    else:
      os.rmdir(top)
      stack.pop()


def _set_limit(which, soft, hard):
  _, current_hard = resource.getrlimit(which)
  if current_hard != resource.RLIM_INFINITY:  # an unprivileged process cannot raise it
    soft, hard = min(soft, current_hard), min(hard, current_hard)
  resource.setrlimit(which, (soft, hard))


def _set_limits(limits):
  _set_limit(resource.RLIMIT_CORE, 0, 0)
  _set_limit(resource.RLIMIT_NOFILE, limits["nofile"], limits["nofile"])
  _set_limit(resource.RLIMIT_FSIZE, limits["fsize_mb"] << 20, limits["fsize_mb"] << 20)
  _set_limit(resource.RLIMIT_NPROC, limits["nproc"], limits["nproc"])
  _set_limit(resource.RLIMIT_CPU, limits["cpu_s"], limits["cpu_s"] + 1)  # SIGXCPU, then KILL
  _set_limit(resource.RLIMIT_AS, limits["memory_mb"] << 20, limits["memory_mb"] << 20)


def _exit_status(exc):
  """The process exit status Python uses for an uncaught SystemExit."""
  code = exc.code
  if code is None:
    return 0
  if isinstance(code, int):
    return code & 0xFF
  try:
    sys.stderr.write(str(code) + "\n")
  except Exception:
    pass
  return 1


def _run_python_here(source, path, args, status_fd):
  """Run the program in this (forked) interpreter the way `python main.py` would."""
  import atexit
  import builtins
  module = types.ModuleType("__main__")
  module.__file__ = path
  module.__builtins__ = builtins
  module.__cached__ = None
  sys.modules["__main__"] = module
  sys.argv = [MAIN_FILE] + list(args)
  sys.path.insert(0, os.path.dirname(path))
  sys.stdin = sys.__stdin__ = open(0, "r", encoding="utf-8", closefd=False)
  sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False)
  sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace", buffering=1,
                                     closefd=False)
  signal.signal(signal.SIGINT, signal.default_int_handler)
  status = 0
  try:
    exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)
  except SystemExit as e:
    status = _exit_status(e)
  except BaseException as e:  # noqa: B036  (mirror the interpreter: report anything)
    if isinstance(e, MemoryError):
      os.write(status_fd, _MEMORY_MARK)
    status = 1
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
      tb = tb.tb_next  # hide the runner's own frames
    try:
      sys.excepthook(type(e), e.with_traceback(tb), tb)
    except BaseException:
      pass
  # What interpreter shutdown does: join non-daemon threads, run atexit, flush.
  try:
    threading = sys.modules.get("threading")
    if threading is not None:
      threading._shutdown()
    atexit._run_exitfuncs()
  except SystemExit as e:
    status = _exit_status(e)
  except BaseException:
    pass
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except BaseException:
      pass
  os._exit(status)


class Runner:

  def __init__(self, settings):
    self.work_root = settings["work_root"]
    self.scrub_dirs = list(settings.get("scrub", ()))
    self.pid1 = os.getpid() == 1
    self.buffer = bytearray()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as PID 1 a handler would let it in
    _prctl(PR_SET_DUMPABLE, 0)
    if not self.pid1:
      _prctl(PR_SET_CHILD_SUBREAPER, 1)

  # --- protocol -------------------------------------------------------------------
  def read_line(self):
    while True:
      end = self.buffer.find(b"\n")
      if end >= 0:
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 1]
        return line
      chunk = os.read(0, 1 << 20)
      if not chunk:
        return None
      self.buffer += chunk

  def write_line(self, message):
    data = memoryview(json.dumps(message).encode("ascii") + b"\n")
    while data:
      data = data[os.write(1, data):]

  def serve(self):
    self.write_line({"hello": True, "python": sys.version, "executable": sys.executable,
                     "pid": os.getpid(), "uid": os.getuid()})
    while True:
      line = self.read_line()
      if line is None:
        return
      retire = False
      try:
        reply = self.run_job(json.loads(line))
      except Exception as e:  # a harness failure: report it, then start afresh
        reply = {"error": f"{type(e).__name__}: {e}"}
        retire = True
      if not self.clean_up():
        retire = True
      reply["retire"] = retire
      self.write_line(reply)
      if retire:
        return

  # --- one job ----------------------------------------------------------------------
  def run_job(self, job):
    jobdir = os.path.join(self.work_root, "work")
    os.mkdir(jobdir, 0o755)
    for rel, blob in job["files"]:
      self.write_file(jobdir, rel, _unblob(blob))
    if job["kind"] == "python":
      self.write_file(jobdir, MAIN_FILE, job["source"].encode("utf-8"))
    stdin_fd = self.stdin_file(_unblob(job["stdin"]))
    pipes = {name: os.pipe() for name in ("stdout", "stderr", "status")}
    if job["result_fd"] is not None:
      pipes["payload"] = os.pipe()
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
      try:
        self.child(job, jobdir, stdin_fd, {k: w for k, (_, w) in pipes.items()})
      except BaseException:
        try:
          import traceback  # only on this failure path: it costs start-up time
          os.write(2, traceback.format_exc().encode("utf-8", "replace"))
        finally:
          os._exit(127)
    os.close(stdin_fd)
    for _, w in pipes.values():
      os.close(w)
    limits = {"stdout": job["output_limit"], "stderr": job["output_limit"], "status": 1024,
              "payload": job["payload_limit"]}
    caps = {name: Capture(limits[name]) for name in pipes}
    status, usage, end, timed_out = self.collect(
        pid, start + job["timeout_s"], {r: caps[name] for name, (r, _) in pipes.items()})
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    stderr_tail = caps["stderr"].tail.decode("utf-8", "replace").strip().splitlines()[-3:]
    memory = (_MEMORY_MARK.strip() in caps["status"].tail or
              any(mark in line for line in stderr_tail for mark in _MEMORY_LINES))
    reply = {
        "stdout": caps["stdout"].text(),
        "stderr": caps["stderr"].text(),
        "exit_code": -sig if sig is not None else os.WEXITSTATUS(status),
        "signal": sig,
        "timed_out": timed_out or sig == signal.SIGXCPU,
        "memory_exceeded": memory,
        "output_truncated": caps["stdout"].truncated or caps["stderr"].truncated,
        "wall_s": round(end - start, 6),
        "cpu_s": round(usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime, 6),
        "max_rss_mb": round(usage.ru_maxrss / 1024, 3) if usage is not None else None,
    }
    if "payload" in caps:
      reply["payload"] = caps["payload"].text()
      reply["payload_truncated"] = caps["payload"].truncated
    return reply

  def write_file(self, jobdir, rel, data):
    parts = rel.split("/")
    if rel.startswith("/") or ".." in parts or not all(parts):
      raise ValueError(f"refusing file path {rel!r}")
    if len(parts) > 1:
      os.makedirs(os.path.join(jobdir, *parts[:-1]), exist_ok=True)
    fd = os.open(os.path.join(jobdir, *parts),
                 os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
      view = memoryview(data)
      while view:
        view = view[os.write(fd, view):]
    finally:
      os.close(fd)

  def stdin_file(self, data):
    path = os.path.join(self.work_root, ".stdin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.unlink(path)
    view = memoryview(data)
    while view:
      view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd

  def child(self, job, jobdir, stdin_fd, writers):
    os.setsid()
    _prctl(PR_SET_DUMPABLE, 1)
    # Park every fd we keep high, then put them in place and close everything else.
    wanted = [(0, stdin_fd), (1, writers["stdout"]), (2, writers["stderr"])]
    if "payload" in writers:
      wanted.append((job["result_fd"], writers["payload"]))
    parked = [(target, fcntl.fcntl(fd, fcntl.F_DUPFD, 100)) for target, fd in wanted]
    status_fd = fcntl.fcntl(writers["status"], fcntl.F_DUPFD_CLOEXEC, 100 + len(parked))
    for target, fd in parked:
      os.dup2(fd, target)
    low = max(target for target, _ in wanted) + 1
    os.closerange(low, status_fd)
    os.closerange(status_fd + 1, 1 << 20)
    os.chdir(jobdir)
    os.umask(0o022)
    env = dict(job["env"])
    env.setdefault("HOME", jobdir)
    env.setdefault("TMPDIR", self.work_root)
    env["PWD"] = jobdir
    _set_limits(job["limits"])
    args = list(job["args"])
    if job["kind"] == "python" and job["fork_python"]:
      os.environ.clear()
      os.environ.update(env)
      _run_python_here(job["source"], os.path.join(jobdir, MAIN_FILE), args, status_fd)
    for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
      signal.signal(sig, signal.SIG_DFL)
    if job["kind"] == "bash":
      os.execve("/bin/bash", ["bash", "-c", job["source"], "bash"] + args, env)
    os.execve(sys.executable, [sys.executable, MAIN_FILE] + args, env)

  def collect(self, pid, deadline, caps):
    """Read the pipes until the program exits (or the deadline kills it) and they close.

    Returns (wait status, rusage of the main process, end time, timed_out).
    """
    try:
      pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
      pidfd = None
    poller = select.poll()
    for fd in caps:
      poller.register(fd, select.POLLIN)
    if pidfd is not None:
      poller.register(pidfd, select.POLLIN)
    status = usage = end = drain_until = None
    timed_out = False
    while True:
      now = time.monotonic()
      if status is None and now >= deadline:
        timed_out = True
        os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        end = now
      if status is not None:
        if drain_until is None:
          if pidfd is not None:
            poller.unregister(pidfd)
          self.kill_rest()  # leftovers die, so the pipes reach EOF
          drain_until = time.monotonic() + 2.0
        if not caps or now >= drain_until:
          break
        wait = drain_until - now
      else:
        wait = deadline - now if pidfd is not None else min(deadline - now, 0.01)
      for fd, _ in poller.poll(max(1, int(wait * 1000) + 1)):
        if fd == pidfd:
          continue
        data = os.read(fd, 1 << 16)
        if data:
          caps[fd].add(data)
        else:
          poller.unregister(fd)
          os.close(fd)
          del caps[fd]
      if status is None:
        got, st, ru = os.wait4(pid, os.WNOHANG)
        if got:
          status, usage, end = st, ru, time.monotonic()
    for fd in caps:
      os.close(fd)
    if pidfd is not None:
      os.close(pidfd)
    return status, usage, end, timed_out

  # --- cleaning up between jobs -------------------------------------------------------
  def kill_rest(self):
    """SIGKILL every process but this one and reap them all; False if that failed."""
    give_up = time.monotonic() + 5.0
    while time.monotonic() < give_up:
      if self.pid1:
        try:
          os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
          pass
      else:
        for pid in self.descendants():
          try:
            os.kill(pid, signal.SIGKILL)
          except ProcessLookupError:
            pass
      while True:
        try:
          got, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
          return True
        if not got:
          break
      time.sleep(0.001)
    return False

  def descendants(self):
    """Pids below this process (unsandboxed mode, where kill(-1) would hit the host)."""
    return set(descendants(os.getpid()))

  def clean_up(self):
    """Kill leftovers and wipe the writable places; False means retire this runner."""
    ok = self.kill_rest()
    for top in [self.work_root] + self.scrub_dirs:
      try:
        os.chmod(top, 0o755 if top == self.work_root else 0o1777)
      except OSError:
        pass  # not ours (e.g. /dev/shm in some setups); the program could not chmod it either
      try:
        for name in os.listdir(top):
          _remove_tree(os.path.join(top, name))
      except FileNotFoundError:
        pass
      except OSError:
        ok = False
    return ok


if __name__ == "__main__":
  Runner(json.loads(sys.argv[1])).serve()
