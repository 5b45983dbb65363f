"""The tracer that runs in a separate (sandboxed) process: CONTEXT -> trace frames.

This file implements rules 1-8 of FORMATS.md ("Execution traces"), as the released
CWM model writes traces: comprehensions, generator expressions and lambdas are frames of
their own (rule 6), and reprs carry no memory addresses (rule 7). It must run on
Python 3.11 (`REQUIRED_PYTHON`): 3.12 inlines comprehensions, so their frames would
disappear; `main()` refuses any other version. Rules 1-4 and 6-7 were checked against
the released model's own greedy traces of CruxEval programs; rule 5 (exception frames)
could not be, since no CruxEval program raises inside `f`, and follows
`sys.settrace`'s exception events as written in FORMATS.md. It uses the
standard library only, so that its source can be shipped to another process as is;
the host imports the same module for the pure helpers (source lines, LOCALS
encoding, address masking, frame sizes), so both sides agree by construction.

Protocol. The process reads one JSON request from stdin,

  {"items": [{"context": str, "stdin": str}, ...], "max_events": int,
   "max_bytes": int, "timeout_s": float, "memory_mb": int, "max_output_bytes": int|None}

and writes one JSON line per item to stdout, in order, as each item finishes:

  {"index": i, "status": "ok" | "too_long" | "timeout" | "memory" | "error",
   "kind": short reason key, "reason": str, "frames": [[event, lineno, payload], ...],
   "num_bytes": int, "exception": repr of an exception that left the entry or None,
   "stdout": str, "repr_fallbacks": int, "python": "3.11.7"}

Repository mode (data_pipelines/programs/repo_traces.py): the request also has
"repo_files": {relative path: text}, written once to a temporary directory, and each
item is {"test": "path.py::name" or "path.py::Class::method", "sources": [relative paths
whose functions are traced], "max_depth": int, "step_in_prob": float, "seed": str,
"max_cuts": int}. The result has "cuts": [{"function": qualname, "file", "line": first
line of its code, "status": "ok" | "too_long", "frames": [[event, file, lineno,
payload], ...]}, ...] (see `_RepoTracer`), and "exception": what the test raised.

`payload` is the LOCALS text of a call/line frame or the VALUE text of a
return/exception frame, exactly as written in the trace text (so `".."` appears in
LOCALS). When the next line would pass `max_output_bytes`, the program writes
`{"stopped": "output_budget", "index": i}` and exits, and the host runs items i... in a
fresh process (a first result that alone is too large becomes an error). Each item runs in a forked child (fresh interpreter state, its own time and
memory limits); where fork is unavailable it runs in-process with a timer.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import linecache
import os
import re
import select
import signal
import sys
import time
import types
# The traced program may replace builtins or module attributes; the tracer keeps its own.
from builtins import (BaseException, Exception, MemoryError, RecursionError, dict, id, len, object,
                      repr)
from json import dumps as _json_dumps

MARKER = "  # << START_OF_TRACE"
CONTEXT_FILENAME = "<cwm_trace_context>"

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
FRAME_SEP = "<|frame_sep|>"
ACTION_SEP = "<|action_sep|>"
RETURN_SEP = "<|return_sep|>"
CALL_SEP = "<|call_sep|>"
LINE_SEP = "<|line_sep|>"
EXCEPTION_SEP = "<|exception_sep|>"
ARG_SEP = "<|arg_sep|>"
TRACE_CONTEXT_START = "<|trace_context_start|>"
EVENT_SEP = {"call": CALL_SEP, "line": LINE_SEP, "return": RETURN_SEP, "exception": EXCEPTION_SEP}

DOTS = ".."  # a local unchanged since the baseline frame (rule 4)
# Code objects of expressions (rule 6): frames of their own, like any function.
INLINE_CODE_NAMES = frozenset(
    {"<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>", "<lambda>"})
# 1: comprehensions folded into their line, ` at 0x...` kept; 2: as the released model
# writes traces (rules 6-7). Data made under another version is not reused.
TRACE_FORMAT_VERSION = 2
REQUIRED_PYTHON = (3, 11)  # 3.12 inlines comprehensions (PEP 709): their frames vanish
_ADDRESS_RE = re.compile(r" at 0x[0-9a-fA-F]+")
_STDOUT_CAP = 1 << 20  # bytes of the program's own output kept per item
_EXIT_MEMORY = 3  # exit status of a child that ran out of memory before reporting
_CHANNEL_FD = None  # the results channel of main(), closed in forked children


# ---------------------------------------------------------------- helpers shared with the host


def context_lines(context: str) -> list[str]:
  """Physical lines of CONTEXT (without their "\\n"); line number k is item k - 1."""
  return context.split("\n")


def source_line(lines: list[str], lineno: int) -> str:
  """SOURCE_LINE of rule 2: the physical line, marker removed, ending with "\\n"."""
  if not 1 <= lineno <= len(lines):
    raise ValueError(f"line {lineno} is outside CONTEXT (1..{len(lines)})")
  line = lines[lineno - 1]
  if line.endswith(MARKER):
    line = line[:-len(MARKER)]
  return line + "\n"


def mask_addresses(text: str) -> str:
  """Removes every ` at 0x<hex>` (rule 7): `<Foo object at 0x7f3a>` -> `<Foo object>`."""
  return _ADDRESS_RE.sub("", text)


def has_address(text: str) -> bool:
  """Whether `text` still holds a ` at 0x<hex>` that rule 7 removes."""
  return _ADDRESS_RE.search(text) is not None


def python_version_error(version_info=None) -> str | None:
  """Why this interpreter cannot make traces (None when it can)."""
  version = tuple((version_info or sys.version_info)[:3])
  if version[:2] == REQUIRED_PYTHON:
    return None
  return ("the tracer needs Python %d.%d (FORMATS.md rules 6-7) but runs on Python %d.%d.%d: "
          "line events differ between versions, and 3.12+ inlines comprehensions so their frames "
          "disappear. Run the sandbox's tracer with a Python %d.%d interpreter "
          "(SandboxConfig.python)" % (*REQUIRED_PYTHON, *version, *REQUIRED_PYTHON))


def encode_locals(items, baseline) -> str:
  """LOCALS text (rules 3-4): `items` are (name, repr) pairs in f_locals order;
  `baseline` maps name -> repr, or is None when the frame has no baseline."""
  if baseline is None:
    return _json_dumps(dict(items))
  return _json_dumps({k: DOTS if baseline.get(k, None) == v else v for k, v in items})


def encode_value(value_repr: str) -> str:
  """VALUE text (rule 5)."""
  return _json_dumps(value_repr)


def frame_text(event: str, payload: str, line: str) -> str:
  """One frame as trace text, e.g. `<|line_sep|>{...}<|action_sep|>  x = 1\\n<|frame_sep|>`."""
  if event in ("call", "line"):
    return EVENT_SEP[event] + payload + ACTION_SEP + line + FRAME_SEP
  return EVENT_SEP[event] + ACTION_SEP + line + ARG_SEP + payload + FRAME_SEP


def prompt_text(context: str) -> str:
  return BOS + TRACE_CONTEXT_START + context + FRAME_SEP


def find_entry(context: str) -> tuple[str, int]:
  """(name, def line) of the entry function: the top-level `def` whose line ends with MARKER."""
  lines = context_lines(context)
  marked = [i + 1 for i, line in enumerate(lines) if line.endswith(MARKER)]
  if len(marked) != 1:
    raise ValueError(f"CONTEXT must have exactly one line ending with {MARKER!r}, found "
                     f"{len(marked)}" + (f" (lines {marked})" if marked else ""))
  tree = ast.parse(context, CONTEXT_FILENAME)  # SyntaxError is reported by the caller
  for node in tree.body:
    if node.lineno == marked[0] and isinstance(node, ast.FunctionDef):
      if _is_generator(node):
        raise ValueError(f"the entry function {node.name!r} (line {node.lineno}) is a generator; "
                         "it must be a plain function called with no arguments")
      return node.name, node.lineno
    if node.lineno == marked[0] and isinstance(node, ast.AsyncFunctionDef):
      raise ValueError(f"the entry function {node.name!r} (line {node.lineno}) is async; it "
                       "must be a plain function called with no arguments")
  raise ValueError(f"line {marked[0]} ends with {MARKER!r} but is not the `def` line of a "
                   "top-level function")


def _is_generator(fn: ast.FunctionDef) -> bool:
  """Whether `yield` occurs in fn's own body (not in nested scopes)."""
  todo = list(fn.body)
  while todo:
    node = todo.pop()
    if isinstance(node, (ast.Yield, ast.YieldFrom)):
      return True
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
      todo.extend(ast.iter_child_nodes(node))
  return False


# ---------------------------------------------------------------- the tracer


class _Abort(BaseException):
  """Stops the traced program (a limit was hit or the tracer failed); BaseException so
  that the program's own `except Exception` does not swallow it."""


class _Timeout(BaseException):
  pass


class _DiffEncoder:
  """Frame payloads shared by both tracers: LOCALS with ".." against the baseline of
  the same invocation (rule 4) and return/exception VALUEs (rule 5). Subclasses set
  `self.baseline = None` and provide `_repr`, `_emit` and `_repr_is_dots`."""

  def _record_locals(self, event, frame):
    items = [(name, self._repr(value)) for name, value in frame.f_locals.items()]
    for name, text in items:
      if text == DOTS:
        self._repr_is_dots(name)
    base = None
    if event == "line" and self.baseline is not None and self.baseline[0] == id(frame):
      base = self.baseline[1]
    self.baseline = (id(frame), dict(items))
    self._emit(event, frame, encode_locals(items, base))

  def _record_value(self, event, frame, value):
    if event == "return":
      self.baseline = None
    self._emit(event, frame, encode_value(self._repr(value)))


class _Tracer(_DiffEncoder):
  """sys.settrace hooks that record frames of CONTEXT code (rules 1-6).

  Every frame of CONTEXT code is traced, comprehensions, generator expressions and
  lambdas included (rule 6): a generator expression, like a generator function, gets
  a call frame each time it resumes and a return frame each time it yields."""

  def __init__(self, lines: list[str], max_events: int, max_bytes: int, start_bytes: int):
    self.lines = lines
    self.line_text = {}  # lineno -> (SOURCE_LINE, its UTF-8 size)
    self.max_events = max_events
    self.max_bytes = max_bytes
    self.num_bytes = start_bytes
    self.frames = []
    self.baseline = None  # (id of the frame, {name: repr}) of the last call/line frame
    self.entry_id = None
    self.done = False
    self.abort = None  # (status, kind, reason) once the trace is given up
    self.repr_fallbacks = 0

  # --- hooks

  def global_trace(self, frame, event, arg):
    """Called on every 'call' event; returns the frame's local trace function or None."""
    if self.done or self.abort is not None:
      return None
    if frame.f_code.co_filename != CONTEXT_FILENAME:
      return None
    self._guard(self._record_locals, "call", frame)
    if self.entry_id is None:
      self.entry_id = id(frame)
    return self.local_trace

  def local_trace(self, frame, event, arg):
    if self.done or self.abort is not None:
      return self.local_trace
    if event == "line":
      self._guard(self._record_locals, "line", frame)
    elif event == "return":
      self._guard(self._record_value, "return", frame, arg)
      if id(frame) == self.entry_id:
        self.done = True
    elif event == "exception":
      self._guard(self._record_value, "exception", frame, arg[1] if arg[1] is not None else arg[0])
    return self.local_trace

  # --- recording

  def _guard(self, fn, *args):
    try:
      fn(*args)
    except _Abort:
      raise
    except MemoryError:
      self.abort = ("memory", "memory", "MemoryError while recording a frame")
      raise _Abort() from None
    except _Timeout:
      raise
    except RecursionError:  # the hook runs one level deeper than the program
      self.abort = ("error", "recursion_limit", "the tracer hit the recursion limit")
      raise _Abort() from None
    except BaseException as e:  # a tracer failure must never pass silently
      self.abort = ("error", "tracer_error", f"tracer failed: {e!r}")
      raise _Abort() from None

  def safe_repr(self, value) -> str:
    """repr(value), or object.__repr__(value) when that raises (counted)."""
    try:
      return repr(value)
    except MemoryError:
      raise
    except Exception:  # e.g. a __repr__ reading attributes that __init__ has not set yet
      self.repr_fallbacks += 1
      return object.__repr__(value)

  def _repr(self, value) -> str:
    return mask_addresses(self.safe_repr(value))

  def _line(self, frame):
    lineno = frame.f_lineno
    if lineno not in self.line_text:
      text = source_line(self.lines, lineno)
      self.line_text[lineno] = (text, len(text.encode("utf-8")))
    return lineno, self.line_text[lineno]

  def _repr_is_dots(self, name):
    self._give_up("error", "repr_is_dots",
                  f"the repr of local {name!r} is {DOTS!r}, which the diff encoding cannot "
                  "represent")

  def _emit(self, event, frame, payload):
    lineno, (line, line_bytes) = self._line(frame)
    self.frames.append([event, lineno, payload])
    self.num_bytes += len(frame_text(event, payload, "")) + line_bytes  # payloads are ASCII
    if len(self.frames) > self.max_events:
      self._give_up("too_long", "max_events", f"more than {self.max_events} events")
    if self.num_bytes > self.max_bytes:
      self._give_up("too_long", "max_bytes", f"trace text exceeds {self.max_bytes} bytes")

  def _give_up(self, status, kind, reason):
    self.abort = (status, kind, reason)
    raise _Abort()


class _CappedSink(io.RawIOBase):
  """A writable raw stream that keeps the first `cap` bytes (the program's stdout)."""

  def __init__(self, cap: int):
    self.cap, self.data, self.dropped = cap, bytearray(), 0

  def writable(self):
    return True

  def write(self, b):
    keep = max(0, min(len(b), self.cap - len(self.data)))
    self.data += bytes(b[:keep])
    self.dropped += len(b) - keep
    return len(b)


def _result(status, kind="", reason="", **extra):
  result = {"status": status, "kind": kind, "reason": reason, "frames": [], "num_bytes": 0,
            "exception": None, "stdout": "", "repr_fallbacks": 0,
            "python": "%d.%d.%d" % sys.version_info[:3]}
  result.update(extra)
  return result


def _stdin_on_fd0(stdin: str):
  """Puts `stdin` on file descriptor 0 (so `open(0)` reads it too); returns the saved
  descriptor, or None when no temporary file can be made (then only sys.stdin has it)."""
  try:
    import tempfile
    with tempfile.TemporaryFile() as f:
      f.write(stdin.encode("utf-8"))
      f.seek(0)
      saved = os.dup(0)
      os.dup2(f.fileno(), 0)
    return saved
  except OSError:
    return None


def trace_item(context: str, stdin: str, max_events: int, max_bytes: int) -> dict:
  """Runs CONTEXT as `__main__` (untraced), then traces its entry function (rule 7)."""
  if "\r" in context:
    return _result("error", "bad_context", "CONTEXT must use \\n line endings (found \\r)")
  try:
    name, _ = find_entry(context)
    code = compile(context, CONTEXT_FILENAME, "exec")
  except SyntaxError as e:
    return _result("error", "syntax_error", f"CONTEXT does not compile: {e!r}")
  except ValueError as e:
    return _result("error", "no_entry", str(e))
  lines = context_lines(context)
  linecache.cache[CONTEXT_FILENAME] = (len(context), None, [l + "\n" for l in lines],
                                       CONTEXT_FILENAME)
  module = types.ModuleType("__main__")
  module.__builtins__ = builtins
  saved = sys.modules.get("__main__"), sys.stdin, sys.stdout, sys.stderr
  sink = _CappedSink(_STDOUT_CAP)
  sys.modules["__main__"] = module
  saved_fd0 = _stdin_on_fd0(stdin)
  sys.stdin = (open(0, encoding="utf-8", closefd=False) if saved_fd0 is not None else
               io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8")), encoding="utf-8"))
  sys.stdout = io.TextIOWrapper(io.BufferedWriter(sink), encoding="utf-8", errors="replace")
  sys.stderr = io.StringIO()
  tracer = _Tracer(lines, max_events, max_bytes, len(prompt_text(context).encode("utf-8")) +
                   len(EOS))
  raised = None
  try:
    try:
      exec(code, module.__dict__)
    except (_Timeout, MemoryError):
      raise
    except BaseException as e:
      return _result("error", "context_error", f"CONTEXT raised while being run as a module: {e!r}")
    entry = module.__dict__.get(name)
    if not callable(entry):
      return _result("error", "no_entry", f"{name!r} is not callable after running CONTEXT")
    sys.settrace(tracer.global_trace)
    try:
      entry()
    except _Abort:
      pass
    except _Timeout:
      raise
    except MemoryError as e:
      if tracer.abort is None:
        tracer.abort = ("memory", "memory", f"the program ran out of memory: {e!r}")
    except BaseException as e:
      raised = e
    finally:
      tracing = sys.gettrace() is not None
      sys.settrace(None)
    try:
      sys.stdout.flush()
    except Exception:
      pass
  finally:
    sys.settrace(None)
    sys.modules["__main__"], sys.stdin, sys.stdout, sys.stderr = saved
    if saved_fd0 is not None:
      os.dup2(saved_fd0, 0)
      os.close(saved_fd0)
  extra = {"num_bytes": tracer.num_bytes, "repr_fallbacks": tracer.repr_fallbacks,
           "stdout": sink.data.decode("utf-8", errors="replace"),
           "exception": None if raised is None else mask_addresses(tracer.safe_repr(raised))}
  if tracer.abort is not None:
    status, kind, reason = tracer.abort
    return _result(status, kind, reason, **extra)
  if not tracer.done:
    if not tracer.frames and raised is not None:
      kind, reason = "entry_error", f"calling the entry function failed: {extra['exception']}"
    elif not tracing and isinstance(raised, RecursionError):
      kind, reason = "recursion_limit", "the tracer hit the recursion limit"
    elif not tracing:
      kind, reason = "incomplete", "tracing was switched off before the entry function returned"
    else:
      kind, reason = "incomplete", "the entry function did not return under the tracer"
    return _result("error", kind, reason, **extra)
  return _result("ok", frames=tracer.frames, **extra)


# ---------------------------------------------------------------- repository level


class _RepoTracer(_DiffEncoder):
  """Cuts function-level traces out of a test run (FORMATS.md, repository-level traces).

  A cut starts at a call of a function defined in one of `sources` (repository files,
  not tests) made while no cut is open (not a comprehension, lambda, generator or
  coroutine, whose frames return at every yield), and ends when that invocation
  returns. Inside it, a callee from `sources` at depth d (the cut's function is depth
  0; comprehension and lambda frames add no depth) is stepped into when
  d <= max_depth and a seeded coin with probability `step_in_prob` says so; otherwise
  it and everything it calls produce no frames (its work belongs to the caller's
  line). A comprehension, generator expression or lambda run directly by a traced
  frame (e.g. `sorted(xs, key=lambda x: ...)`) is part of that frame's work and is
  always traced, with frames of its own as in function-level traces (rule 6). Frames
  follow rules 1-7, with the diff-encoding baseline over the frames the cut emits.
  """

  def __init__(self, sources: dict, max_depth: int, step_in_prob: float, seed: str,
               max_events: int, max_cuts: int):
    self.sources = sources  # co_filename -> repository-relative path
    self.max_depth, self.step_in_prob, self.seed = max_depth, step_in_prob, seed
    self.max_events, self.max_cuts = max_events, max_cuts
    self.cuts = []
    self.cut = None  # the open cut: dict(root, stack, frames, rng, overflow)
    self.suppressing = None
    self.baseline = None
    self.repr_fallbacks = 0
    self.abort = None

  safe_repr = _Tracer.safe_repr
  _repr = _Tracer._repr
  _guard = _Tracer._guard

  def global_trace(self, frame, event, arg):
    if self.abort is not None or self.suppressing is not None:
      return None
    code = frame.f_code
    path = self.sources.get(code.co_filename)
    if path is None:
      return None
    inline = code.co_name in INLINE_CODE_NAMES
    if self.cut is None:
      if inline or code.co_name == "<module>" or code.co_flags & _CO_SUSPENDABLE:
        return None  # traced only inside a cut
      if len(self.cuts) >= self.max_cuts:
        return None
      import random
      self.cut = {"root": frame, "stack": [], "frames": [], "overflow": False,
                  "function": code.co_qualname, "file": path, "line": frame.f_lineno,
                  "rng": random.Random("%s:%d" % (self.seed, len(self.cuts)))}
      self.baseline = None
    else:
      cut = self.cut
      if cut["overflow"]:
        return None
      run_by_traced_frame = inline and cut["stack"] and frame.f_back is cut["stack"][-1]
      depth = sum(f.f_code.co_name not in INLINE_CODE_NAMES for f in cut["stack"])
      if not run_by_traced_frame and (
          code.co_name == "<module>" or depth > self.max_depth or
          not cut["rng"].random() < self.step_in_prob):
        self.suppressing = frame
        frame.f_trace_lines = False
        return self._watch_suppressed
    self.cut["stack"].append(frame)
    self._guard(self._record_locals, "call", frame)
    return self.local_trace

  def _watch_suppressed(self, frame, event, arg):
    if event == "return" and frame is self.suppressing:
      self.suppressing = None
    return self._watch_suppressed

  def local_trace(self, frame, event, arg):
    cut = self.cut
    if (cut is None or self.suppressing is not None or self.abort is not None or
        not any(f is frame for f in cut["stack"])):
      return self.local_trace  # e.g. a generator of an earlier cut resumed
    if event == "return" and frame is cut["root"] and cut["overflow"]:
      self._finish()
      return self.local_trace
    if cut["overflow"]:
      return self.local_trace
    if event == "line":
      self._guard(self._record_locals, "line", frame)
    elif event == "return":
      self._guard(self._record_value, "return", frame, arg)
      cut["stack"].pop()
      if frame is cut["root"]:
        self._finish()
    elif event == "exception":
      self._guard(self._record_value, "exception", frame,
                  arg[1] if arg[1] is not None else arg[0])
    return self.local_trace

  def _finish(self):
    cut, self.cut = self.cut, None
    self.cuts.append({"function": cut["function"], "file": cut["file"], "line": cut["line"],
                      "status": "too_long" if cut["overflow"] else "ok",
                      "frames": [] if cut["overflow"] else cut["frames"]})

  def _repr_is_dots(self, name):
    raise ValueError(f"the repr of local {name!r} is {DOTS!r}, which the diff encoding "
                     "cannot represent")

  def _emit(self, event, frame, payload):
    cut = self.cut
    cut["frames"].append([event, self.sources[frame.f_code.co_filename], frame.f_lineno, payload])
    if len(cut["frames"]) > self.max_events:
      cut["overflow"], cut["frames"] = True, []
      cut["stack"][1:] = []  # only the root's return is still watched


_CO_SUSPENDABLE = 0x20 | 0x80 | 0x200  # CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR
_REPO_ROOT = None  # where main() wrote the request's repository files


def _write_repo(files: dict) -> str:
  import tempfile
  root = os.path.realpath(tempfile.mkdtemp(prefix="cwm_repo_"))
  for rel, text in files.items():
    path = os.path.realpath(os.path.join(root, rel))
    if not path.startswith(root + os.sep):
      raise ValueError(f"repository path {rel!r} leaves the repository")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
  return root


class _Raises:
  """`pytest.raises(E)` for the shim below."""

  def __init__(self, expected, match=None):
    self.expected, self.match, self.value = expected, match, None

  def __enter__(self):
    return self

  def __exit__(self, kind, value, tb):
    if kind is None:
      raise AssertionError(f"DID NOT RAISE {self.expected}")
    if not issubclass(kind, self.expected):
      return False
    if self.match is not None and not re.search(self.match, str(value)):
      raise AssertionError(f"{value!r} does not match {self.match!r}")
    self.value = value
    return True


class _Mark:
  def __getattr__(self, name):
    return lambda *a, **k: (a[0] if len(a) == 1 and callable(a[0]) and not k else
                            (lambda fn: fn))


def _ensure_pytest():
  """Where pytest is not installed (e.g. the sandbox's bare interpreter), a minimal
  stand-in with `raises` and no-op `mark`s, enough for plain test functions."""
  try:
    import pytest  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    shim = types.ModuleType("pytest")
    shim.raises, shim.mark = _Raises, _Mark()
    sys.modules["pytest"] = shim


def _resolve_test(root: str, test: str):
  """`path.py::name` or `path.py::Class::method` -> a callable with no arguments."""
  import importlib.util
  _ensure_pytest()
  rel, *names = test.split("::")
  path = os.path.join(root, rel)
  for folder in (os.path.dirname(path), root):  # pytest's rootdir-style sys.path entries
    if folder not in sys.path:
      sys.path.insert(0, folder)
  modname = rel[:-3].replace("/", ".") if rel.endswith(".py") else rel.replace("/", ".")
  spec = importlib.util.spec_from_file_location(modname, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[modname] = module
  spec.loader.exec_module(module)
  target = module
  for i, name in enumerate(names):
    target = getattr(target, name)
    if isinstance(target, type) and i < len(names) - 1:
      target = target()
      if hasattr(target, "setup_method"):
        target.setup_method(getattr(target, names[-1]))
  return target


def trace_repo_item(item: dict, max_events: int) -> dict:
  """Runs one test of the repository in _REPO_ROOT (untraced) and returns its cuts."""
  root = _REPO_ROOT
  if root is None:
    return _result("error", "no_repo", "the request carries no repository files")
  sources = {os.path.join(root, rel): rel for rel in item["sources"]}
  os.chdir(root)
  saved = sys.stdout, sys.stderr
  sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
  try:
    try:
      test = _resolve_test(root, item["test"])
    except (_Timeout, MemoryError):
      raise
    except BaseException as e:
      return _result("error", "collect_error", f"could not load {item['test']}: {e!r}")
    tracer = _RepoTracer(sources, int(item["max_depth"]), float(item["step_in_prob"]),
                         str(item["seed"]), max_events, int(item.get("max_cuts", 1000)))
    raised = None
    sys.settrace(tracer.global_trace)
    try:
      test()
    except _Abort:
      pass
    except (_Timeout, MemoryError):
      raise
    except BaseException as e:
      raised = e
    finally:
      sys.settrace(None)
  finally:
    sys.stdout, sys.stderr = saved
  extra = {"repr_fallbacks": tracer.repr_fallbacks, "cuts": tracer.cuts,
           "exception": None if raised is None else mask_addresses(tracer.safe_repr(raised))}
  if tracer.abort is not None:
    status, kind, reason = tracer.abort
    return _result(status, kind, reason, **extra)
  return _result("ok", **extra)


def _trace_any(item: dict, request: dict) -> dict:
  if "test" in item:
    return trace_repo_item(item, request["max_events"])
  return trace_item(item["context"], item.get("stdin", ""), request["max_events"],
                    request["max_bytes"])


# ---------------------------------------------------------------- isolation and limits


def _set_memory_limit(memory_mb: int):
  try:
    import resource
    limit = int(memory_mb) << 20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
      limit = min(limit, hard)  # an outer sandbox may already allow less
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  except (ImportError, ValueError, OSError):
    pass


def _run_forked(item: dict, request: dict) -> dict:
  """Traces one item in a forked child; the parent enforces the time limit."""
  timeout_s = float(request["timeout_s"])
  read_fd, write_fd = os.pipe()
  try:
    pid = os.fork()
  except OSError:
    os.close(read_fd)
    os.close(write_fd)
    raise
  if pid == 0:  # child
    os.close(read_fd)
    if _CHANNEL_FD is not None:
      os.close(_CHANNEL_FD)
    code = 0
    try:
      _set_memory_limit(request["memory_mb"])
      result = _trace_any(item, request)
      data = json.dumps(result).encode("utf-8")
    except MemoryError:
      data, code = b"", _EXIT_MEMORY
    except BaseException as e:
      data = json.dumps(_result("error", "tracer_error", f"tracer failed: {e!r}")).encode()
    try:
      view = memoryview(data)
      while view:
        view = view[os.write(write_fd, view):]
    finally:
      os._exit(code)
  os.close(write_fd)
  deadline = time.monotonic() + timeout_s
  chunks, timed_out = [], False
  try:
    while True:
      left = deadline - time.monotonic()
      if left <= 0:
        timed_out = True
        break
      ready, _, _ = select.select([read_fd], [], [], left)
      if ready:
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
          break
        chunks.append(chunk)
  finally:
    os.close(read_fd)
    if timed_out:
      os.kill(pid, signal.SIGKILL)
    _, wait_status = os.waitpid(pid, 0)
  if timed_out:
    return _result("timeout", "timeout", f"exceeded the time limit of {timeout_s:g} s")
  if chunks:
    try:
      return json.loads(b"".join(chunks))
    except ValueError:
      pass
  if os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) == _EXIT_MEMORY:
    return _result("memory", "memory", f"exceeded the memory limit of {request['memory_mb']} MB")
  if os.WIFSIGNALED(wait_status) and os.WTERMSIG(wait_status) == signal.SIGKILL:
    return _result("memory", "killed", "the tracing process was killed (out of memory?)")
  return _result("error", "process_died",
                 f"the tracing process ended without a result (wait status {wait_status})")


def _run_inline(item: dict, request: dict) -> dict:
  """Traces one item in this process (no fork): a timer raises _Timeout."""
  def on_alarm(signum, frame):
    raise _Timeout()
  previous = signal.signal(signal.SIGALRM, on_alarm)
  signal.setitimer(signal.ITIMER_REAL, float(request["timeout_s"]))
  try:
    return _trace_any(item, request)
  except _Timeout:
    return _result("timeout", "timeout", f"exceeded the time limit of {request['timeout_s']:g} s")
  except MemoryError:
    return _result("memory", "memory", "the program ran out of memory")
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
    sys.settrace(None)


def _ensure_hash_seed():
  """Rule 7 needs PYTHONHASHSEED=0; re-executes this program with it when it is missing
  (e.g. under `python -I`, which ignores the environment variable)."""
  if sys.flags.hash_randomization == 0:
    return
  if os.environ.get("CWM_TRACER_REEXEC") == "1":
    raise RuntimeError("hash randomization is still on after re-executing with PYTHONHASHSEED=0")
  argv = sys.orig_argv
  if "-c" in argv and "def _ensure_hash_seed" in argv[argv.index("-c") + 1]:
    args = ["-c", argv[argv.index("-c") + 1]]
  elif globals().get("__file__") and os.path.abspath(sys.argv[0]) == os.path.abspath(__file__):
    args = [os.path.abspath(__file__)]
  else:  # run by some other host process: it must set the seed itself
    raise RuntimeError("the tracer needs PYTHONHASHSEED=0 (FORMATS.md rule 7)")
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
  env.update(PYTHONHASHSEED="0", CWM_TRACER_REEXEC="1")
  sys.stdout.flush()
  os.execve(sys.executable, [sys.executable, "-s", *args], env)


def main():
  _ensure_hash_seed()
  request = json.loads(sys.stdin.read())
  wrong_python = python_version_error()
  if wrong_python is not None:  # every item fails the same way; the host raises on it
    for index in range(len(request["items"])):
      sys.stdout.write(json.dumps(_result("error", "python_version", wrong_python,
                                          index=index)) + "\n")
    sys.stdout.flush()
    return
  # Results go to a duplicate of fd 1, and fd 1 itself to /dev/null, so that a program
  # writing to fd 1 directly cannot corrupt them.
  global _CHANNEL_FD
  _CHANNEL_FD = os.dup(1)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 1)
  os.close(devnull)
  channel = os.fdopen(_CHANNEL_FD, "w", encoding="utf-8")
  if request.get("repo_files") is not None:
    global _REPO_ROOT
    _REPO_ROOT = _write_repo(request["repo_files"])
  fork = hasattr(os, "fork") and not request.get("inline", False)
  budget = request.get("max_output_bytes")  # the executor's output cap, if any
  written = 0
  for index, item in enumerate(request["items"]):
    result = None
    if fork:
      try:
        result = _run_forked(item, request)
      except OSError:  # fork refused (process limits): fall back to in-process
        fork = False
    if result is None:
      result = _run_inline(item, request)
    result["index"] = index
    line = json.dumps(result) + "\n"
    if budget and written + len(line) + 100 > budget:
      if written:  # stop here; the host runs the rest in a fresh process
        channel.write(json.dumps({"stopped": "output_budget", "index": index}) + "\n")
        break
      line = json.dumps(_result("error", "output_limit",
                                f"the result ({len(line)} bytes) exceeds the executor's output "
                                f"limit ({budget} bytes)", index=index)) + "\n"
    channel.write(line)
    channel.flush()
    written += len(line)


if __name__ == "__main__":
  main()
