"""Hostile programs: each must fail safely (or be contained) while the host stays untouched.

Every test runs against a fresh sandbox per job and against a warm pool worker.
"""

import ast
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from cwm_jax.sandbox import Sandbox, SandboxConfig, SandboxPool

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap missing: apt-get install -y bubblewrap")

REPO = Path(__file__).resolve().parents[2]
CONFIG = SandboxConfig(timeout_s=5, memory_mb=512, max_processes=32,
                       output_limit_bytes=64 << 10)
SLACK_S = 2.5  # sandbox start-up + clean-up allowance on a loaded 2-core machine


@pytest.fixture(scope="module", params=["fresh", "pool"])
def box(request):
  if request.param == "fresh":
    yield Sandbox(CONFIG)
  else:
    with SandboxPool(2, CONFIG) as pool:
      yield pool


@pytest.fixture
def host_dir():
  """A world-writable host directory visible inside (so only the sandbox can stop writes)."""
  base = "/var/tmp" if os.path.isdir("/var/tmp") else str(REPO)
  path = tempfile.mkdtemp(prefix="cwm-sandbox-test-", dir=base)
  os.chmod(path, 0o777)
  yield Path(path)
  shutil.rmtree(path, ignore_errors=True)


def host_pids_with(marker: str) -> list[int]:
  found = []
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        if marker.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
          found.append(int(name))
      except OSError:
        pass
  return found


def test_writes_outside_the_work_dir_fail(box, host_dir):
  token = uuid.uuid4().hex
  victim_dir = Path(tempfile.mkdtemp(prefix="cwm-sandbox-victim-"))  # host /tmp
  victim = victim_dir / "victim.txt"
  victim.write_text("original")
  targets = [f"/etc/cwm_{token}", f"/root/cwm_{token}", f"/usr/lib/cwm_{token}",
             str(REPO / f"cwm_{token}"), str(host_dir / f"cwm_{token}")]
  code = f"""
import json, os
out = {{}}
for path in {targets!r}:
    try:
        with open(path, "w") as f:
            f.write("pwned")
        out[path] = "written"
    except OSError as e:
        out[path] = type(e).__name__
os.makedirs({str(victim_dir)!r}, exist_ok=True)   # the sandbox's /tmp is private
with open({str(victim)!r}, "w") as f:
    f.write("pwned")
with open("inside.txt", "w") as f:                 # the work dir is writable
    f.write("fine")
out["workdir"] = open("inside.txt").read()
json.dump(out, open(3, "w"))
"""
  try:
    r = box.run_python_json(code)
    assert r.exit_code == 0, r.stderr
    assert r.payload.pop("workdir") == "fine"
    assert set(r.payload) == set(targets)
    assert "written" not in r.payload.values(), r.payload
    for path in targets:
      assert not os.path.exists(path)
    assert victim.read_text() == "original"
  finally:
    shutil.rmtree(victim_dir, ignore_errors=True)


def test_symlinks_do_not_escape(box, host_dir):
  target = host_dir / "through_link.txt"
  code = f"""
import os
os.symlink({str(target)!r}, "link")
os.symlink("/etc/passwd", "passwd")
for name in ("link", "passwd"):
    try:
        open(name, "a").write("pwned")
        print(name, "written")
    except OSError as e:
        print(name, type(e).__name__)
"""
  r = box.run_python(code)
  assert r.exit_code == 0, r.stderr
  assert "written" not in r.stdout
  assert not target.exists()
  assert "pwned" not in Path("/etc/passwd").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="non-root hosts run the sandbox as their own "
                    "uid, so their own 0600 files are readable by design")
def test_root_only_host_file_unreadable(box, host_dir):
  os.chmod(host_dir, 0o755)
  secret, public = host_dir / "secret", host_dir / "public"
  secret.write_text("TOP-SECRET")
  secret.chmod(0o600)
  public.write_text("hello")
  public.chmod(0o644)
  code = f"""
print(open({str(public)!r}).read())
try:
    print(open({str(secret)!r}).read())
except PermissionError:
    print("denied")
"""
  r = box.run_python(code)
  assert r.stdout.split() == ["hello", "denied"], (r.stdout, r.stderr)


def test_host_processes_and_environment_are_invisible(box):
  token = "cwm-secret-" + uuid.uuid4().hex
  helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", token],
                            env={**os.environ, "CWM_SECRET": token})
  try:
    code = f"""
import os
seen = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for what in ("environ", "cmdline"):
            try:
                seen.append(open(f"/proc/{{pid}}/{{what}}", "rb").read())
            except OSError:
                pass
for path in ("/proc/1/environ", "/proc/1/root/etc", "/proc/1/fd", "/proc/{helper.pid}/environ"):
    try:
        seen.append(repr(os.listdir(path) if "environ" not in path else open(path, "rb").read()).encode())
        print(path, "READ")
    except OSError as e:
        print(path, type(e).__name__)
print(b"".join(seen).count({token.encode()!r}), sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
print(sorted(os.environ))
"""
    r = box.run_python(code)
    assert r.exit_code == 0, r.stderr
    assert token not in r.stdout
    assert "READ" not in r.stdout, r.stdout
    count, pids = r.stdout.splitlines()[-2].split(" ", 1)
    assert count == "0"
    assert len(ast.literal_eval(pids)) <= 3  # runner, this program, maybe a reaper: not the host's
    assert "CWM_SECRET" not in r.stdout
  finally:
    helper.kill()
    helper.wait()


def test_network_is_unreachable(box):
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(4)
  server.settimeout(0.5)
  port = server.getsockname()[1]
  code = f"""
import socket
for host in ("127.0.0.1", "10.0.0.1", "8.8.8.8"):
    try:
        socket.create_connection((host, {port}), timeout=1)
        print(host, "CONNECTED")
    except OSError as e:
        print(host, type(e).__name__)
try:
    socket.getaddrinfo("example.com", 80)
    print("dns RESOLVED")
except OSError as e:
    print("dns", type(e).__name__)
print([name for _, name in socket.if_nameindex()])
"""
  try:
    r = box.run_python(code)
    assert r.exit_code == 0, r.stderr
    assert "CONNECTED" not in r.stdout and "RESOLVED" not in r.stdout, r.stdout
    assert r.stdout.splitlines()[-1] == "['lo']"
    with pytest.raises(socket.timeout):
      server.accept()
  finally:
    server.close()


def test_unix_socket_on_host_filesystem_is_refused(box, host_dir):
  path = str(host_dir / "service.sock")
  server = socket.socket(socket.AF_UNIX)
  server.bind(path)
  os.chmod(path, 0o777)
  server.listen(1)
  server.settimeout(0.5)
  code = f"""
import socket
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect({path!r})
    print("CONNECTED")
except OSError as e:
    print(type(e).__name__)
a, b = socket.socketpair()  # stream pairs (multiprocessing, asyncio) still work
a.sendall(b"ok")
print(b.recv(2).decode())
"""
  try:
    r = box.run_python(code)
    assert r.stdout.split() == ["PermissionError", "ok"], (r.stdout, r.stderr)
    with pytest.raises(socket.timeout):
      server.accept()
  finally:
    server.close()


def test_fork_bomb_is_bounded_and_host_stays_responsive(box):
  counted = """
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as e:
    print(n, type(e).__name__)
"""
  r = box.run_python(counted)
  n, error = r.stdout.split()
  assert error == "BlockingIOError" and int(n) < CONFIG.max_processes, r.stdout

  bomb = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
  results = []
  start = time.monotonic()
  thread = threading.Thread(target=lambda: results.append(box.run_python(bomb, timeout_s=1.5)))
  thread.start()
  host_latencies = []
  while thread.is_alive():
    t0 = time.monotonic()
    subprocess.run(["true"], check=True)
    host_latencies.append(time.monotonic() - t0)
    time.sleep(0.05)
  thread.join()
  assert results[0].timed_out
  assert time.monotonic() - start < 1.5 + SLACK_S
  assert max(host_latencies) < 1.0
  assert box.run_bash(":(){ :|:& };: ; sleep 1", timeout_s=1).exit_code is not None
  assert box.run_python("print('still fine')").stdout == "still fine\n"


@pytest.mark.parametrize("code", [
    "x = bytearray(10**10)",
    "chunks = []\nwhile True:\n    chunks.append(b'x' * 10**7)",
])
def test_memory_bomb_is_contained(box, code):
  start = time.monotonic()
  r = box.run_python(code, memory_mb=256)
  assert r.memory_exceeded and r.exit_code == 1, r
  assert "MemoryError" in r.stderr
  assert time.monotonic() - start < 5


def test_memory_bomb_in_a_subprocess(box):
  r = box.run_bash("python3 -c 'x = bytearray(10**10)'", memory_mb=256)
  assert r.memory_exceeded and r.exit_code == 1, r


def test_cpu_time_limit():
  with SandboxPool(1, SandboxConfig(cpu_s=1)) as pool:  # RLIMIT_CPU well below the wall limit
    r = pool.run_python("while True:\n    pass", timeout_s=5)
    assert r.timed_out and r.signal == signal.SIGXCPU and r.wall_s < 2.5, r
    assert pool.run_python("print('next')").stdout == "next\n"


def test_disk_and_file_descriptor_bombs():
  small = Sandbox(SandboxConfig(workdir_mb=16, max_file_mb=4, max_open_files=64))
  code = """
import os
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return os.strerror(e.errno)
def big_file():
    with open("big", "wb") as f:
        f.write(b"x" * (8 << 20))
def fill_disk():
    for i in range(100):
        with open(f"part{i}", "wb") as f:
            f.write(b"x" * (3 << 20))
print(attempt(big_file))
print(attempt(fill_disk))
print(attempt(lambda: [open("/dev/null") for _ in range(1000)]))
"""
  r = small.run_python(code)
  assert r.stdout.splitlines() == ["File too large", "No space left on device",
                                   "Too many open files"], (r.stdout, r.stderr)
  assert small.run_python("open('x', 'w').write('fine')").ok


def test_infinite_loop_times_out(box):
  start = time.monotonic()
  r = box.run_python("while True:\n    pass", timeout_s=1)
  assert r.timed_out and r.exit_code == -9 and not r.ok
  assert 1.0 <= r.wall_s < 1.5
  assert time.monotonic() - start < 1 + SLACK_S


@pytest.mark.parametrize("main_ends", ["timeout", "exit"])
def test_detached_descendants_are_killed(main_ends, box, host_dir):
  """A setsid'd, double-forked sleeper must not outlive the job (it would write a file)."""
  marker = "cwm-sleeper-" + uuid.uuid4().hex
  code = f"""
import os, subprocess, time
subprocess.Popen(["sh", "-c", "sleep 1.2; echo late > /tmp/{marker}", "{marker}"],
                 start_new_session=True)
time.sleep(0.2)
print("spawned", flush=True)
{"while True: pass" if main_ends == "timeout" else ""}
"""
  r = box.run_python(code, timeout_s=1)
  assert r.stdout == "spawned\n"
  assert r.timed_out == (main_ends == "timeout")
  assert host_pids_with(marker) == []
  time.sleep(1.5)  # past the sleeper's deadline
  assert host_pids_with(marker) == []
  check = box.run_python(f"import os; print(os.path.exists('/tmp/{marker}'))")
  assert check.stdout == "False\n"


def test_huge_output_is_truncated(box):
  r = box.run_python("import sys\nsys.stdout.write('x' * 10**7)\nsys.stderr.write('e' * 10**6)")
  assert r.exit_code == 0 and r.output_truncated
  assert r.stdout == "x" * CONFIG.output_limit_bytes
  assert r.stderr == "e" * CONFIG.output_limit_bytes
  r = box.run_python("while True:\n    print('spam' * 1000)", timeout_s=1)
  assert r.timed_out and r.output_truncated
  assert len(r.stdout) == CONFIG.output_limit_bytes


def test_killing_the_parent_does_not_break_the_harness(box):
  r = box.run_python("import os\nos.kill(os.getppid(), 9)\nprint('still here', os.getppid())")
  assert r.exit_code == 0 and r.stdout == "still here 1\n", r
  r = box.run_bash("sleep 30 & kill -9 -1; echo survived")
  assert r.exit_code == 0 and r.stdout == "survived\n", r
  assert box.run_python("print(6 * 7)").stdout == "42\n"


def test_no_privileges_to_gain(box):
  script = """
grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status
python3 -c 'import os; os.setuid(0)' 2>/dev/null || echo setuid-denied
mount -t tmpfs none /mnt 2>/dev/null || echo mount-denied
if command -v unshare >/dev/null; then unshare -U true 2>/dev/null || echo userns-denied; else echo userns-denied; fi
su root -c id </dev/null 2>/dev/null || echo su-denied
python3 - <<'EOF'
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print("ptrace-denied" if libc.ptrace(16, 1, 0, 0) != 0 else "PTRACE-ATTACHED")
EOF
id -u
"""
  r = box.run_bash(script)
  lines = r.stdout.split("\n")
  assert "CapEff:\t0000000000000000" in lines and "CapBnd:\t0000000000000000" in lines
  assert "NoNewPrivs:\t1" in lines
  for denied in ("setuid-denied", "mount-denied", "userns-denied", "su-denied", "ptrace-denied"):
    assert denied in lines, r.stdout
  assert lines[-2] == "65534"


def test_path_traversal_in_files_is_refused(box, host_dir):
  for bad in ("../../x", "/etc/passwd", "a/../../x", str(host_dir / "x")):
    with pytest.raises(ValueError, match="files"):
      box.run_python("print(1)", files={bad: "pwned"})
  assert not (host_dir / "x").exists()


def test_host_tree_unchanged():
  """After everything above the repo has no stray files from the sandbox."""
  leftovers = [p for p in REPO.iterdir() if p.name.startswith("cwm_") and p.is_file()]
  assert leftovers == []
  assert stat.S_IMODE(os.stat("/etc").st_mode) & 0o022 == 0
