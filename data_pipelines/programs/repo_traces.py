"""Repository-level traces: run a repository's tests under the tracer and cut
function-level traces (FORMATS.md, "Repository-level traces").

    files = read_repo("path/to/repo")                      # {relative path: source}
    results = trace_repo(files, max_depth=2, step_in_prob=0.5, seed=0)

Each test (a `test_*` function with no arguments, or a no-argument `test_*` method of
a `Test*` class; pytest fixtures are not supported) runs in the tracer's sandboxed
process. A cut starts at each call of a function defined in a *source* file (not a
test file) made from outside the repository's sources, and ends when it returns. Callees
in source files at depth <= `max_depth` below it are stepped into with probability
`step_in_prob` (seeded per test and cut); a callee not stepped into produces no frames
of its own, so its call appears only as the caller's line.

CONTEXT of a cut, so that the function-level formatter and strict parser apply as is:
the source files the cut's frames come from, the traced function's file first, then
the others in order of first appearance, each preceded by a header line
`# file: RELATIVE/PATH.py`; the line where the traced function's code starts (its
`def`, or first decorator) ends with `  # << START_OF_TRACE`. The trace starts at that
function's call frame and ends (with <|end_of_text|>) when it returns.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import posixpath
from collections.abc import Mapping, Sequence

from data_pipelines.traces import executors
from data_pipelines.traces import tracer_program as tp
from data_pipelines.traces.format import format_trace
from data_pipelines.traces.trace import TraceLimits, TraceResult, _wire_trace, run_tracer_items

FILE_HEADER = "# file: {}"
TEST_DIRS = ("tests", "test", "testing")


def read_repo(root: str | os.PathLike, exts: Sequence[str] = (".py",)) -> dict[str, str]:
  """{posix relative path: text} of the repository's Python files (hidden dirs skipped)."""
  files = {}
  for folder, dirs, names in os.walk(root):
    dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
    for name in sorted(names):
      if name.endswith(tuple(exts)):
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
          files[os.path.relpath(path, root).replace(os.sep, "/")] = f.read()
  return files


def is_test_file(path: str) -> bool:
  name = posixpath.basename(path)
  return (name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py" or
          any(part in TEST_DIRS for part in path.split("/")[:-1]))


def _no_required_args(fn: ast.FunctionDef, skip_self: bool) -> bool:
  args = fn.args
  positional = args.posonlyargs + args.args
  required = len(positional) - len(args.defaults) - (1 if skip_self else 0)
  return required <= 0 and all(d is not None for d in args.kw_defaults)


def discover_tests(files: Mapping[str, str]) -> list[str]:
  """Test ids `path::function` / `path::Class::method` of the test files, in file order."""
  tests = []
  for path in sorted(files):
    name = posixpath.basename(path)
    if not (path.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))):
      continue
    try:
      tree = ast.parse(files[path])
    except SyntaxError:
      continue
    for node in tree.body:
      if (isinstance(node, ast.FunctionDef) and node.name.startswith("test") and
          _no_required_args(node, False)):
        tests.append(f"{path}::{node.name}")
      elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
        methods = [n for n in node.body if isinstance(n, ast.FunctionDef)]
        if any(m.name == "__init__" for m in methods):
          continue  # pytest does not collect these either
        tests += [f"{path}::{node.name}::{m.name}" for m in methods
                  if m.name.startswith("test") and _no_required_args(m, True)]
  return tests


def cut_context(files: Mapping[str, str], cut: dict) -> tuple[str, dict[str, int]]:
  """(CONTEXT, {path: line offset}) of a cut (see the module docstring)."""
  order = [cut["file"]]
  for _, path, _, _ in cut["frames"]:
    if path not in order:
      order.append(path)
  parts, offsets, n = [], {}, 0
  for path in order:
    lines = files[path].split("\n")
    if lines and lines[-1] == "":
      lines.pop()
    if path == cut["file"]:
      lines[cut["line"] - 1] += tp.MARKER
    offsets[path] = n + 1  # the header line
    parts += [FILE_HEADER.format(path), *lines]
    n += 1 + len(lines)
  return "\n".join(parts) + "\n", offsets


def trace_repo(files: Mapping[str, str], *, tests: Sequence[str] | None = None,
               sources: Sequence[str] | None = None, max_depth: int = 2,
               step_in_prob: float = 1.0, seed: int | str = 0, max_cuts_per_test: int = 100,
               limits: TraceLimits = TraceLimits(), executor: executors.Executor | None = None
               ) -> list[TraceResult]:
  """Function-level traces cut from running `tests` (default: `discover_tests`).

  `sources` are the files whose functions are traced (default: every .py file that is
  not a test file, see `is_test_file`). Returns one TraceResult per cut, with id
  `TEST#K:PATH:QUALNAME`; a test that cannot run gives one result with id `TEST` and its
  drop reason. `limits.max_events`/`max_bytes` apply per cut, the time and memory
  limits per test.
  """
  files = {p: t.replace("\r\n", "\n").replace("\r", "\n") for p, t in files.items()}
  tests = discover_tests(files) if tests is None else list(tests)
  if sources is None:
    sources = [p for p in files if p.endswith(".py") and not is_test_file(p)]
  executor = executor or executors.choose_executor()
  items = [{"test": t, "sources": list(sources), "max_depth": max_depth,
            "step_in_prob": step_in_prob, "seed": f"{seed}:{t}", "max_cuts": max_cuts_per_test}
           for t in tests]
  raws = run_tracer_items(items, limits, executor, extra={"repo_files": files})
  results = []
  for test, raw in zip(tests, raws):
    if raw["status"] != "ok":
      results.append(TraceResult(test, raw["status"], raw.get("kind", ""), raw.get("reason", "")))
      continue
    for k, cut in enumerate(raw["cuts"]):
      results.append(_cut_result(files, f"{test}#{k}:{cut['file']}:{cut['function']}", cut,
                                 limits, raw.get("repr_fallbacks", 0) if k == 0 else 0))
  return results


def _cut_result(files, cut_id: str, cut: dict, limits: TraceLimits, fallbacks: int
                ) -> TraceResult:
  if cut["status"] != "ok":
    return TraceResult(cut_id, "too_long", "max_events", f"more than {limits.max_events} events")
  context, offsets = cut_context(files, cut)
  frames = [[event, offsets[path] + lineno, payload] for event, path, lineno, payload
            in cut["frames"]]
  try:
    trace = _wire_trace(context, frames)
  except ValueError as e:  # TraceParseError included
    return TraceResult(cut_id, "error", "invalid_trace", f"cut failed validation: {e}")
  size = len(format_trace(trace).encode("utf-8"))
  if size > limits.max_bytes:
    return TraceResult(cut_id, "too_long", "max_bytes", f"trace text exceeds {limits.max_bytes} "
                       "bytes")
  return TraceResult(cut_id, "ok", trace=trace, num_bytes=size, repr_fallbacks=fallbacks)
