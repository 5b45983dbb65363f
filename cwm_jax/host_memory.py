"""The host's memory allocator: tcmalloc in place of glibc malloc, chosen at start-up.

    from cwm_jax.host_memory import use_tcmalloc
    use_tcmalloc()  # the first thing a command does: it may re-execute the process

Why (issue 13; `benchmarks/host_allocator.py` measures it). XLA:CPU gives every
execution of a compiled program its temporaries as fresh allocations per device
and frees them when the execution ends: the quickstart's midtrain step takes 171 MB
per device, its pretrain step more. glibc serves a block that large with a new
`mmap` and returns it with `munmap`, so each step faults its whole temporary area
in again, one zero-filled 4 KiB page at a time: 83,500 minor page faults per
midtrain step and 158,000 per pretrain step, about a fifth of the step's CPU time
spent in the kernel. tcmalloc keeps freed memory and reuses it: no faults, and the
same steps run 1.2-1.3x faster.

glibc cannot be tuned out of this from inside a running process: `mallopt` caps
its mmap threshold at 32 MiB, and a thread on any arena but the main one maps
oversized blocks regardless of the setting. One arena without mmap does remove the
faults, but then every device and worker thread contends for that arena's lock and
the steps ran slower than with the faults.

The allocator is fixed when a process starts (`LD_PRELOAD`), so `use_tcmalloc`
re-executes the command line the interpreter was started with (`sys.orig_argv`)
once, with tcmalloc preloaded, before JAX starts. It changes nothing when tcmalloc
is already loaded, when `CWM_JAX_TCMALLOC=0`, off Linux, or when no tcmalloc library
is installed (Debian/Ubuntu: `apt-get install libtcmalloc-minimal4`; the README's
first command installs it); in that last case it logs once what that costs.
`CWM_JAX_TCMALLOC=/path/to/libtcmalloc.so` names the library explicitly.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import sys
from typing import Optional

ENV = "CWM_JAX_TCMALLOC"          # "0": keep glibc; a path: that library
_REEXEC_ENV = "_CWM_JAX_TCMALLOC_REEXEC"  # set in the re-executed process: no loops
# gperftools reports every allocation above 1 GiB on stderr unless told otherwise;
# large checkpoints and KV caches are normal here.
_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 45)}
_NAMES = ("tcmalloc_minimal", "tcmalloc")  # gperftools' two builds, minimal first

log = logging.getLogger(__name__)


def tcmalloc_loaded() -> bool:
  """Whether this process has a tcmalloc library mapped (Linux: /proc/self/maps)."""
  try:
    with open("/proc/self/maps") as f:
      return any("libtcmalloc" in line for line in f)
  except OSError:
    return False


def find_tcmalloc() -> Optional[str]:
  """The tcmalloc library to preload: `CWM_JAX_TCMALLOC` if it names a file, else
  the first of gperftools' libraries the dynamic linker knows, else None."""
  named = os.environ.get(ENV, "")
  if named not in ("", "0", "1"):
    if not os.path.isfile(named):
      raise ValueError(f"{ENV}={named!r}: expected '0', '1' or the path of a tcmalloc "
                       f"shared library, and no such file exists.")
    return named
  for name in _NAMES:
    found = ctypes.util.find_library(name)  # a soname such as libtcmalloc_minimal.so.4
    if found:
      return found
  return None


def use_tcmalloc() -> bool:
  """Make this process run on tcmalloc, re-executing it if needed; returns whether
  it does. Call it first, before JAX, threads or input; on a re-execution the call
  does not return (the process starts over with the same command line)."""
  if tcmalloc_loaded():
    return True
  if os.environ.get(ENV) == "0" or not sys.platform.startswith("linux"):
    return False
  library = find_tcmalloc()
  if library is None:
    log.warning("tcmalloc not found: on CPU each train step page-faults its XLA "
                "temporaries in again (steps ~1.2-1.3x slower); install it with "
                "`apt-get install libtcmalloc-minimal4` (see cwm_jax/host_memory.py).")
    return False
  if os.environ.get(_REEXEC_ENV):
    log.warning("%s was preloaded but is not loaded (LD_PRELOAD=%r); running on "
                "glibc malloc.", library, os.environ.get("LD_PRELOAD"))
    return False
  env = dict(os.environ, **_QUIET)
  env["LD_PRELOAD"] = " ".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
  env[_REEXEC_ENV] = "1"
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  os.execve(sys.executable, sys.orig_argv, env)
  raise AssertionError("unreachable: os.execve returned")
