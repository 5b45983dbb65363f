"""Task files (JSON Lines, optionally .gz) -> `Task`s, every skipped record counted.

    stats = TaskFileStats()
    tasks = load_tasks(["cp.jsonl", "more.jsonl.gz"], "code", stats=stats)
    log.info(stats.summary())

One record per line:
- code, stdin/stdout tests:
  {"id", "prompt", "tests": [{"input": str, "output": str}, ...]}
- code, call-based tests (the solution defines `fn_name`, or a class `Solution`
  with that method):
  {"id", "prompt", "fn_name": str, "tests": [{"args": [...], "output": ...}, ...]}
  (also accepted: "tests": {"fn_name": ..., "tests": [...]})
  both optionally with "starter_code" (str), "time_limit_s" (per test, > 0) and
  "memory_mb" (int > 0), which override the environment's defaults.
- math: {"id", "problem", "answer"} (a numeric answer is read as its text).
"id" is a non-empty string (an integer is read as its text).

A record that is not valid JSON, not an object, or lacks a field or has one of the
wrong type is skipped and counted under its reason with its file and line; so is a
repeated id (the first one wins, across all files of one call). Blank lines are not
records. A file without any valid task is an error (`TaskFileError`), so a wrong
path or format never becomes a silently empty task set. `parse_code` /
`parse_math` are the same checks on one record; the environments use them on
`Task.data`.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Union

from cwm_jax.rl.envs.base import Task

log = logging.getLogger("cwm_jax.rl.envs")

KINDS = ("code", "math")
REASONS = ("bad_json", "not_an_object", "missing_field", "wrong_type", "bad_value",
           "duplicate_id")
PathLike = Union[str, os.PathLike]


class TaskRecordError(ValueError):
  """One record that is not a valid task; `reason` is one of REASONS."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


class TaskFileError(ValueError):
  """A task file that holds no valid task."""


@dataclasses.dataclass(frozen=True)
class CodeProblem:
  """A competitive-programming task. `fn_name` None: stdin/stdout tests
  ({"input", "output"}); else call-based tests ({"args", "output"})."""
  prompt: str
  tests: tuple[Mapping[str, Any], ...]
  fn_name: str | None = None
  starter_code: str = ""
  time_limit_s: float | None = None
  memory_mb: int | None = None


@dataclasses.dataclass(frozen=True)
class MathProblem:
  problem: str
  answer: str


@dataclasses.dataclass
class TaskFileStats:
  """What loading read: tasks kept, records skipped by reason, and where (file:line)."""
  loaded: int = 0
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  problems: list[str] = dataclasses.field(default_factory=list)
  max_problems: int = 1000  # how many "file:line: reason: detail" lines are kept

  def add(self, path: str, line: int, reason: str, detail: str) -> str:
    message = f"{path}:{line}: {reason}: {detail}"
    self.skipped[reason] += 1
    if len(self.problems) < self.max_problems:
      self.problems.append(message)
    return message

  @property
  def n_skipped(self) -> int:
    return sum(self.skipped.values())

  def summary(self) -> str:
    reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.skipped.items())) or "none"
    return f"{self.loaded} tasks loaded, {self.n_skipped} records skipped ({reasons})"

  def to_json(self) -> dict:
    return {"loaded": self.loaded, "skipped": dict(sorted(self.skipped.items())),
            "problems": list(self.problems)}


# ---------------------------------------------------------------- one record


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _field(record: Mapping, name: str, types: tuple, what: str, required: bool = True):
  if name not in record:
    if required:
      raise TaskRecordError("missing_field", f"missing field {name!r} ({what})")
    return None
  value = record[name]
  if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
    raise TaskRecordError("wrong_type", f"field {name!r} must be {what}, got "
                          f"{type(value).__name__}")
  return value


def _text(record: Mapping, name: str) -> str:
  value = _field(record, name, (str,), "a non-empty string")
  if not value.strip():
    raise TaskRecordError("bad_value", f"field {name!r} is empty")
  return value


def task_id(record: Mapping) -> str:
  value = _field(record, "id", (str, int), "a non-empty string")
  value = str(value)
  if not value.strip():
    raise TaskRecordError("bad_value", "field 'id' is empty")
  return value


def _limits(record: Mapping) -> tuple[float | None, int | None]:
  time_limit = _field(record, "time_limit_s", (int, float), "a number of seconds", False)
  if time_limit is not None and not 0 < time_limit < float("inf"):
    raise TaskRecordError("bad_value", f"time_limit_s={time_limit!r}; expected > 0")
  memory = record.get("memory_mb")
  if memory is not None and not (_is_int(memory) and memory > 0):
    raise TaskRecordError("bad_value" if _is_int(memory) else "wrong_type",
                          f"memory_mb={memory!r}; expected a positive integer")
  return (None if time_limit is None else float(time_limit)), memory


def parse_code(record: Mapping) -> CodeProblem:
  """A code record's problem; TaskRecordError names what is wrong."""
  prompt = _text(record, "prompt")
  fn_name = _field(record, "fn_name", (str,), "a function name", required=False)
  tests = _field(record, "tests", (list, dict), "a list of tests")
  if isinstance(tests, dict):  # "tests": {"fn_name": ..., "tests": [...]}
    inner = _field(tests, "fn_name", (str,), "a function name (in 'tests')")
    if fn_name is not None and fn_name != inner:
      raise TaskRecordError("bad_value", f"fn_name {fn_name!r} and tests.fn_name {inner!r} "
                            "differ")
    fn_name, tests = inner, _field(tests, "tests", (list,), "a list of tests (in 'tests')")
  if fn_name is not None and not fn_name.isidentifier():
    raise TaskRecordError("bad_value", f"fn_name {fn_name!r} is not a Python identifier")
  if not tests:
    raise TaskRecordError("bad_value", "'tests' is empty")
  for k, test in enumerate(tests):
    if not isinstance(test, dict):
      raise TaskRecordError("wrong_type", f"tests[{k}] must be an object, got "
                            f"{type(test).__name__}")
    if fn_name is None:
      _field(test, "input", (str,), f"a string (tests[{k}], stdin)")
      _field(test, "output", (str,), f"a string (tests[{k}], stdout)")
    else:
      _field(test, "args", (list,), f"a list of arguments (tests[{k}], call-based)")
      if "output" not in test:
        raise TaskRecordError("missing_field", f"missing field 'output' (tests[{k}])")
  starter = _field(record, "starter_code", (str,), "a string", required=False) or ""
  time_limit, memory = _limits(record)
  return CodeProblem(prompt, tuple(tests), fn_name, starter, time_limit, memory)


def parse_math(record: Mapping) -> MathProblem:
  """A math record's problem; TaskRecordError names what is wrong."""
  problem = _text(record, "problem")
  answer = _field(record, "answer", (str, int, float), "a string")
  answer = str(answer)
  if not answer.strip():
    raise TaskRecordError("bad_value", "field 'answer' is empty")
  return MathProblem(problem, answer)


PARSERS: dict[str, Callable[[Mapping], Any]] = {"code": parse_code, "math": parse_math}


# ---------------------------------------------------------------- files


def _open(path: str):
  if path.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8")
  return open(path, encoding="utf-8")


def _read_file(path: str, kind: str, env: str, seen: set[str], stats: TaskFileStats
               ) -> list[Task]:
  tasks, first_problems, n_skipped = [], [], stats.n_skipped

  def skip(line_no: int, reason: str, detail: str) -> None:
    message = stats.add(path, line_no, reason, detail)
    if len(first_problems) < 3:
      first_problems.append(message)

  with _open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        skip(line_no, "bad_json", str(e))
        continue
      if not isinstance(record, dict):
        skip(line_no, "not_an_object", f"a JSON {type(record).__name__}")
        continue
      try:
        tid = task_id(record)
        PARSERS[kind](record)
      except TaskRecordError as e:
        skip(line_no, e.reason, str(e))
        continue
      if tid in seen:
        skip(line_no, "duplicate_id", f"id {tid!r} was already loaded")
        continue
      seen.add(tid)
      tasks.append(Task(id=tid, env=env, data=record))
  n_bad = stats.n_skipped - n_skipped
  if n_bad:
    log.warning("%s: skipped %d of %d %s task records; first: %s", path, n_bad,
                n_bad + len(tasks), kind, first_problems[0])
  if not tasks:
    raise TaskFileError(f"{path}: no valid {kind} task ({n_bad} records skipped"
                        + (f"; first: {'; '.join(first_problems)})" if n_bad else ")"))
  return tasks


def load_tasks(paths: PathLike | Sequence[PathLike], kind: str, *, env: str | None = None,
               stats: TaskFileStats | None = None) -> list[Task]:
  """Tasks of `kind` ("code" or "math") from JSONL files, in file and line order.

  `env` is the `Task.env` name (default: `kind`). Skipped records are counted in
  `stats` (and logged per file); a file with no valid task raises TaskFileError.
  """
  if kind not in PARSERS:
    raise ValueError(f"load_tasks: kind={kind!r}; expected one of {KINDS}")
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  stats = stats if stats is not None else TaskFileStats()
  tasks: list[Task] = []
  seen: set[str] = set()
  for path in map(os.fspath, paths):
    new = _read_file(path, kind, env or kind, seen, stats)
    stats.loaded += len(new)
    tasks += new
  return tasks
