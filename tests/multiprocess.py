"""Running several `jax.distributed` CPU processes from a test (gloo collectives).

    procs = start_workers([argv_0, argv_1], tmp_path, devices=4)
    ...                                  # e.g. compute the 1-process reference meanwhile
    wait_workers(procs)                  # raises with the failing worker's log tail

Workers write their output to log files (a full pipe cannot block a worker while
its peer waits in a collective) and are all killed on a timeout or a failure, so a
broken run cannot hang the suite.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def worker_env(devices: int) -> dict:
  """This environment with `devices` fake CPU devices and the repository importable."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("CWM_")}
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(REPO)
  return env


def start_workers(commands, log_dir: Path, devices: int = 4):
  """Starts every command (an argv list, or (argv, env)) at once."""
  commands = [c if isinstance(c, tuple) else (c, worker_env(devices)) for c in commands]
  logs = [open(Path(log_dir) / f"worker{i}.log", "w+") for i in range(len(commands))]
  procs = [subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True) for (argv, env), log in zip(commands, logs)]
  return list(zip(procs, logs))


def wait_workers(workers, timeout_s: float = TIMEOUT_S) -> None:
  """Waits for every worker; kills all of them on timeout or failure."""
  try:
    for p, log in workers:
      p.wait(timeout=timeout_s)
      if p.returncode != 0:
        log.seek(0)
        raise AssertionError(f"worker {p.args} exited with {p.returncode}:\n{log.read()[-4000:]}")
  finally:
    for p, log in workers:
      if p.poll() is None:
        p.kill()
        p.wait()
      log.close()


def run_workers(commands, log_dir: Path, devices: int = 4) -> None:
  wait_workers(start_workers(commands, log_dir, devices))
