"""cwm_jax/host_memory.py: the re-execution under tcmalloc, its switches, and the page
faults it exists to remove (counted by the kernel, not timed)."""

import json
import os
import subprocess
import sys

import pytest

from cwm_jax import host_memory
from cwm_jax.host_memory import find_tcmalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_tcmalloc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or find_tcmalloc() is None,
    reason="no tcmalloc library (apt-get install libtcmalloc-minimal4)")

# Prints a line before the call (it must appear once, not once per process image),
# then what the process runs on and its arguments.
_REPORT = r"""
import json, os, sys
print("before", flush=True)
from cwm_jax.host_memory import use_tcmalloc, tcmalloc_loaded
result = use_tcmalloc()
print(json.dumps({"result": result, "loaded": tcmalloc_loaded(), "argv": sys.argv[1:],
                  "preload": os.environ.get("LD_PRELOAD", "")}))
"""


def _run(code, *args, **env):
  full_env = {k: v for k, v in os.environ.items()
              if k not in ("LD_PRELOAD", host_memory.ENV, host_memory._REEXEC_ENV)}
  full_env.update(PYTHONPATH=ROOT, **env)
  out = subprocess.run([sys.executable, "-c", code, *args], env=full_env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  return out


@needs_tcmalloc
def test_reexecutes_once_with_the_same_arguments():
  out = _run(_REPORT, "a", "b c", "--flag=1")
  lines = out.stdout.splitlines()
  assert lines.count("before") == 2  # the original image and the re-executed one
  got = json.loads(lines[-1])
  assert got == {"result": True, "loaded": True, "argv": ["a", "b c", "--flag=1"],
                 "preload": find_tcmalloc()}


def test_switched_off_keeps_glibc():
  got = json.loads(_run(_REPORT, "x", CWM_JAX_TCMALLOC="0").stdout.splitlines()[-1])
  assert got == {"result": False, "loaded": False, "argv": ["x"], "preload": ""}


def test_a_preload_that_does_not_take_is_not_retried():
  # Name a real shared library that is not tcmalloc: the process re-executes once,
  # finds no tcmalloc and goes on with glibc instead of re-executing forever.
  with open("/proc/self/maps") as f:
    libc = next(line.split()[-1] for line in f if "/libc.so" in line or "/libc-" in line)
  out = _run(_REPORT, CWM_JAX_TCMALLOC=libc)
  got = json.loads(out.stdout.splitlines()[-1])
  assert out.stdout.splitlines().count("before") == 2
  assert got["result"] is False and got["loaded"] is False and got["preload"] == libc
  assert "is not loaded" in out.stderr


def test_a_missing_library_path_is_an_error(monkeypatch):
  monkeypatch.setenv(host_memory.ENV, "/no/such/libtcmalloc.so")
  with pytest.raises(ValueError, match="CWM_JAX_TCMALLOC='/no/such/libtcmalloc.so'"):
    find_tcmalloc()


# A jitted program with ~3 x 48 MiB of temporaries: glibc maps them afresh on every
# call (at least one fault per 4 KiB page), tcmalloc reuses them after warm-up. Now
# and then (seen in ~1 call in 7) tcmalloc takes fresh pages for one call, so the
# faults are counted per call and tcmalloc is judged by its median call.
_FAULTS = r"""
import json, resource
from cwm_jax.host_memory import use_tcmalloc, tcmalloc_loaded
use_tcmalloc()
import jax, jax.numpy as jnp
x = jnp.ones((6144, 2048), jnp.float32)
f = jax.jit(lambda x: (jnp.cumsum(x, axis=0) * jnp.cumsum(x, axis=0)[::-1]).sum())
for _ in range(3):
  jax.block_until_ready(f(x))
faults = []
for _ in range(11):
  r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(f(x))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(json.dumps({"loaded": tcmalloc_loaded(), "faults": faults}))
"""


@needs_tcmalloc
def test_tcmalloc_removes_the_per_call_page_faults():
  pages = 6144 * 2048 * 4 // 4096
  glibc = json.loads(_run(_FAULTS, CWM_JAX_TCMALLOC="0", JAX_PLATFORMS="cpu").stdout.splitlines()[-1])
  tc = json.loads(_run(_FAULTS, JAX_PLATFORMS="cpu").stdout.splitlines()[-1])
  assert not glibc["loaded"] and tc["loaded"]
  assert min(glibc["faults"]) >= pages, glibc  # each call faults its temporaries in again
  assert sorted(tc["faults"])[5] < pages / 10, tc  # the median call reuses them
