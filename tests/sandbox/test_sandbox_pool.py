"""SandboxPool: parallel jobs, reuse, crash and timeout recovery, isolation between jobs."""

import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cwm_jax.sandbox import SandboxConfig, SandboxError, SandboxPool

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap missing: apt-get install -y bubblewrap")

CONFIG = SandboxConfig(timeout_s=5, memory_mb=512)


@pytest.fixture(scope="module")
def pool():
  with SandboxPool(2, CONFIG) as pool:
    yield pool


def test_parallel_jobs_from_threads(pool):
  code = "import time, sys\ntime.sleep(0.3)\nprint(int(sys.argv[1]) ** 2)"
  start = time.monotonic()
  with ThreadPoolExecutor(4) as threads:
    results = list(threads.map(lambda i: pool.run_python(code, args=[str(i)]), range(8)))
  elapsed = time.monotonic() - start
  assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(8)]
  assert elapsed < 8 * 0.3  # two workers overlap
  assert pool.worker_starts == 2


def test_many_sequential_jobs_reuse_the_workers(pool):
  pids, starts = pool.worker_pids, pool.worker_starts
  for i in range(40):
    assert pool.run_python(f"print({i})").stdout == f"{i}\n"
  assert pool.worker_pids == pids and pool.worker_starts == starts


@pytest.mark.parametrize("code, sig", [
    ("import os\nos.abort()", signal.SIGABRT),
    ("import ctypes\nctypes.string_at(0)", signal.SIGSEGV),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", signal.SIGKILL),
])
def test_a_crashing_job_does_not_break_the_worker(pool, code, sig):
  starts = pool.worker_starts
  r = pool.run_python(code)
  assert (r.exit_code, r.signal, r.sandbox_error) == (-sig, sig, None)
  assert all(pool.run_python("print('ok')").ok for _ in range(2))
  assert pool.worker_starts == starts


def test_timeouts_inside_the_pool(pool):
  starts = pool.worker_starts
  with ThreadPoolExecutor(2) as threads:
    slow = threads.submit(pool.run_python, "while True:\n    pass", timeout_s=1)
    fast = threads.submit(pool.run_python, "print('fast')")
    assert fast.result().stdout == "fast\n"
    assert slow.result().timed_out
  assert pool.run_python("print('after')").stdout == "after\n"
  assert pool.worker_starts == starts


def test_a_killed_worker_is_restarted():
  with SandboxPool(1, CONFIG) as pool:
    assert pool.run_python("print(1)").ok
    os.kill(pool.worker_pids[0], signal.SIGKILL)
    time.sleep(0.1)
    assert pool.run_python("print(2)").stdout == "2\n"
    assert pool.worker_starts == 2


def test_nothing_carries_over_between_jobs():
  with SandboxPool(1, CONFIG) as pool:
    r = pool.run_bash("echo a > /tmp/left; echo b > /dev/shm/left; echo c > left; "
                      "mkdir -p locked/deep; chmod 000 locked; (sleep 30 &) ; echo done")
    assert r.stdout == "done\n"
    r = pool.run_bash("ls -A /tmp /dev/shm .; pgrep -c sleep || true")
    assert r.stdout.split() == [".:", "/dev/shm:", "/tmp:", "work", "0"], r.stdout
    assert pool.worker_starts == 1


def test_the_job_that_kills_an_unsandboxed_runner_gets_a_result():
  config = SandboxConfig(executor="unsandboxed", timeout_s=5)
  with SandboxPool(1, config) as pool:
    r = pool.run_python("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert r.sandbox_error and r.exit_code is None and not r.ok
    assert pool.run_python("print('back')").stdout == "back\n"
    assert pool.worker_starts == 2


def test_closed_pool_refuses_jobs():
  pool = SandboxPool(1, CONFIG)
  pool.close()
  with pytest.raises(SandboxError, match="closed"):
    pool.run_python("print(1)")
