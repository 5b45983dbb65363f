"""Job: one validated request (program, inputs, limits) and its JSON wire form."""

from __future__ import annotations

import base64
import dataclasses
import math
import posixpath
from collections.abc import Mapping, Sequence

from cwm_jax.sandbox.config import SandboxConfig

KINDS = ("python", "bash")
RESULT_FD = 3  # where `run_python_json` programs write their JSON payload
MAIN_FILE = "main.py"  # the Python program's file name in the work dir


@dataclasses.dataclass(frozen=True)
class Job:
  kind: str
  source: str
  stdin: str | bytes = ""
  files: tuple[tuple[str, str | bytes], ...] = ()
  args: tuple[str, ...] = ()
  env: tuple[tuple[str, str], ...] = ()
  timeout_s: float = 10.0
  memory_mb: int = 2048
  want_payload: bool = False


def make_job(kind: str, source: str, config: SandboxConfig, *, stdin: str | bytes = "",
             files: Mapping[str, str | bytes] | None = None, args: Sequence[str] = (),
             env: Mapping[str, str] | None = None, timeout_s: float | None = None,
             memory_mb: int | None = None, want_payload: bool = False) -> Job:
  """Check a request; raise ValueError naming the bad argument."""
  if kind not in KINDS:
    raise ValueError(f"job kind {kind!r}; expected one of {KINDS}")
  if not isinstance(source, str):
    raise ValueError(f"{kind} source must be str, got {type(source).__name__}")
  if not isinstance(stdin, (str, bytes)):
    raise ValueError(f"stdin must be str or bytes, got {type(stdin).__name__}")
  timeout_s = config.timeout_s if timeout_s is None else timeout_s
  memory_mb = config.memory_mb if memory_mb is None else memory_mb
  if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < math.inf):
    raise ValueError(f"timeout_s={timeout_s!r}; expected a positive number of seconds")
  if not (isinstance(memory_mb, int) and memory_mb > 0):
    raise ValueError(f"memory_mb={memory_mb!r}; expected a positive integer")
  if isinstance(args, str) or not all(isinstance(a, str) and "\0" not in a for a in args):
    raise ValueError(f"args={args!r}; expected a sequence of str without NUL")
  checked_files = []
  for path, content in (files or {}).items():
    path = check_relative_path(path)
    if kind == "python" and path == MAIN_FILE:
      raise ValueError(f"files: {MAIN_FILE!r} is reserved for the program itself")
    if not isinstance(content, (str, bytes)):
      raise ValueError(f"files[{path!r}] must be str or bytes, got {type(content).__name__}")
    checked_files.append((path, content))
  checked_env = []
  for key, value in (env or {}).items():
    if not (isinstance(key, str) and key and "=" not in key and "\0" not in key
            and isinstance(value, str) and "\0" not in value):
      raise ValueError(f"env[{key!r}]={value!r}: names and values must be str, without '=' "
                       "in names and without NUL")
    checked_env.append((key, value))
  return Job(kind=kind, source=source, stdin=stdin, files=tuple(checked_files),
             args=tuple(args), env=tuple(checked_env), timeout_s=float(timeout_s),
             memory_mb=memory_mb, want_payload=want_payload)


def check_relative_path(path: str) -> str:
  """Normalise a work-dir-relative path; refuse anything that could leave the work dir."""
  if not isinstance(path, str) or not path or "\0" in path:
    raise ValueError(f"files: bad path {path!r}; expected a non-empty relative path")
  if path.startswith("/"):
    raise ValueError(f"files: {path!r} is absolute; paths must be relative to the work dir")
  parts = path.split("/")
  if ".." in parts:
    raise ValueError(f"files: {path!r} escapes the work dir ('..' is not allowed)")
  norm = posixpath.normpath(path)
  if norm in (".", "") or norm.startswith(".."):
    raise ValueError(f"files: {path!r} does not name a file inside the work dir")
  return norm


def _blob(data: str | bytes) -> dict:
  if isinstance(data, bytes):
    return {"b64": base64.b64encode(data).decode("ascii")}
  return {"text": data}


def to_wire(job: Job, config: SandboxConfig) -> dict:
  """The JSON message the runner receives (limits resolved from the config)."""
  env = dict(config.env)
  if config.hash_seed is not None:
    env["PYTHONHASHSEED"] = str(config.hash_seed)
  env.update(job.env)
  if job.want_payload:
    env["CWM_RESULT_FD"] = str(RESULT_FD)
  return {
      "kind": job.kind,
      "source": job.source,
      "stdin": _blob(job.stdin),
      "files": [[path, _blob(content)] for path, content in job.files],
      "args": list(job.args),
      "env": env,
      "timeout_s": job.timeout_s,
      "fork_python": config.fork_python,
      "result_fd": RESULT_FD if job.want_payload else None,
      "limits": {
          "memory_mb": job.memory_mb,
          "cpu_s": config.cpu_limit_s(job.timeout_s),
          "nproc": config.max_processes,
          "nofile": config.max_open_files,
          "fsize_mb": config.max_file_mb,
      },
      "output_limit": config.output_limit_bytes,
      "payload_limit": config.payload_limit_bytes,
  }
