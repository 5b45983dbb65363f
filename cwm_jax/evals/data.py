"""Benchmark files -> validated problem records (HumanEval, MBPP, CruxEval, MATH-500).

    problems = load_benchmark("humaneval", "/data/HumanEval.jsonl.gz")
    path = download("cruxeval", "/data")          # only when asked, needs a network

Files are JSON Lines (HumanEval also `.jsonl.gz`), read exactly as the upstream
projects publish them. Every record is checked: a bad line raises
`BenchmarkFileError` naming the file, the line, the field and what was expected,
so a truncated download or a wrong file never turns into a silently smaller
benchmark. Nothing is bundled: `download` fetches the official file (pinned to a
commit, checked against its sha256) into a directory the user names.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping


class BenchmarkFileError(ValueError):
  """A benchmark file that cannot be read as the benchmark it claims to be."""


@dataclasses.dataclass(frozen=True)
class HumanEvalProblem:
  task_id: str
  prompt: str
  canonical_solution: str
  test: str
  entry_point: str


@dataclasses.dataclass(frozen=True)
class MbppProblem:
  task_id: int
  text: str
  code: str
  test_list: tuple[str, ...]
  test_setup_code: str = ""
  challenge_test_list: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class CruxEvalProblem:
  id: str
  code: str
  input: str
  output: str


@dataclasses.dataclass(frozen=True)
class MathProblem:
  unique_id: str
  problem: str
  answer: str
  solution: str = ""
  subject: str = ""
  level: int = 0


def _str(v) -> bool:
  return isinstance(v, str)


def _str_list(v) -> bool:
  return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


# benchmark -> (record type, id field, {field: (check, expected, required)}, aliases)
_SPECS: dict[str, tuple] = {
    "humaneval": (HumanEvalProblem, "task_id", {
        "task_id": (_str, "a string", True), "prompt": (_str, "a string", True),
        "canonical_solution": (_str, "a string", True), "test": (_str, "a string", True),
        "entry_point": (_str, "a string", True)}, {}),
    "mbpp": (MbppProblem, "task_id", {
        "task_id": (_int, "an integer", True), "text": (_str, "a string", True),
        "code": (_str, "a string", True), "test_list": (_str_list, "a list of strings", True),
        "test_setup_code": (_str, "a string", False),
        "challenge_test_list": (_str_list, "a list of strings", False)},
        {"prompt": "text"}),  # the "sanitized" MBPP file calls the statement "prompt"
    "cruxeval": (CruxEvalProblem, "id", {
        "id": (_str, "a string", True), "code": (_str, "a string", True),
        "input": (_str, "a string", True), "output": (_str, "a string", True)}, {}),
    "math500": (MathProblem, "unique_id", {
        "unique_id": (_str, "a string", True), "problem": (_str, "a string", True),
        "answer": (_str, "a string", True), "solution": (_str, "a string", False),
        "subject": (_str, "a string", False), "level": (_int, "an integer", False)}, {}),
}
BENCHMARKS = tuple(_SPECS)


def _open_lines(path: str):
  if path.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8")
  return open(path, encoding="utf-8")


def _record(benchmark: str, raw: Mapping, where: str):
  cls, _, fields, aliases = _SPECS[benchmark]
  raw = dict(raw)
  for alias, name in aliases.items():
    if name not in raw and alias in raw:
      raw[name] = raw[alias]
  values = {}
  for name, (check, expected, required) in fields.items():
    if name not in raw:
      if required:
        raise BenchmarkFileError(f"{where}: missing field {name!r} (expected {expected}) in a "
                                 f"{benchmark} record; it has fields {sorted(raw)}")
      continue
    if not check(raw[name]):
      raise BenchmarkFileError(f"{where}: field {name!r} must be {expected}, got "
                               f"{type(raw[name]).__name__} {str(raw[name])[:60]!r}")
    value = raw[name]
    values[name] = tuple(value) if isinstance(value, list) else value
  if benchmark == "mbpp" and not values["test_list"]:
    raise BenchmarkFileError(f"{where}: field 'test_list' is empty; an MBPP task needs tests")
  if benchmark == "humaneval" and not values["entry_point"].isidentifier():
    raise BenchmarkFileError(f"{where}: field 'entry_point' must be a Python identifier, got "
                             f"{values['entry_point']!r}")
  return cls(**values)


def load_benchmark(benchmark: str, path: str | os.PathLike) -> list:
  """All records of a benchmark file, in file order (blank lines are not records).

  Raises FileNotFoundError for a missing file and BenchmarkFileError for a line
  that is not JSON, a record with a missing or mistyped field, a repeated id, or a
  file with no records.
  """
  if benchmark not in _SPECS:
    raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{benchmark} file {path!r} does not exist (pass a path to the "
                            f"upstream JSONL file, or download it with "
                            f"cwm_jax.evals.data.download({benchmark!r}, DIR))")
  id_field = _SPECS[benchmark][1]
  records, seen = [], {}
  try:
    with _open_lines(path) as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        where = f"{path}:{n}"
        try:
          raw = json.loads(line)
        except ValueError as e:
          raise BenchmarkFileError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
          raise BenchmarkFileError(f"{where}: expected a JSON object, got "
                                   f"{type(raw).__name__}")
        record = _record(benchmark, raw, where)
        key = getattr(record, id_field)
        if key in seen:
          raise BenchmarkFileError(f"{where}: {id_field} {key!r} repeats line {seen[key]}")
        seen[key] = n
        records.append(record)
  except (OSError, EOFError, UnicodeDecodeError) as e:  # e.g. a truncated .gz
    raise BenchmarkFileError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
  if not records:
    raise BenchmarkFileError(f"{path}: no {benchmark} records in the file")
  return records


def load_humaneval(path) -> list[HumanEvalProblem]:
  return load_benchmark("humaneval", path)


def load_mbpp(path) -> list[MbppProblem]:
  return load_benchmark("mbpp", path)


def load_cruxeval(path) -> list[CruxEvalProblem]:
  return load_benchmark("cruxeval", path)


def load_math500(path) -> list[MathProblem]:
  return load_benchmark("math500", path)


# ---------------------------------------------------------------- download


@dataclasses.dataclass(frozen=True)
class Source:
  """An official file, pinned to a commit, with the sha256 of its bytes."""
  url: str
  filename: str
  sha256: str


# Pinned to the commits that shared/data/README.md documents, so the dev subsets
# there are byte-for-byte subsets of these files.
SOURCES: dict[str, Source] = {
    "humaneval": Source(
        "https://raw.githubusercontent.com/openai/human-eval/"
        "6d43fb980f9fee3c892a914eda09951f772ad10d/data/HumanEval.jsonl.gz",
        "HumanEval.jsonl.gz",
        "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"),
    "mbpp": Source(
        "https://raw.githubusercontent.com/google-research/google-research/"
        "30adf0ec5f35f9609c2f1d896005e184195d9146/mbpp/mbpp.jsonl",
        "mbpp.jsonl",
        "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f"),
    "cruxeval": Source(
        "https://raw.githubusercontent.com/facebookresearch/cruxeval/"
        "190faf16d175b5847b0af05d937872b1fb395942/data/cruxeval.jsonl",
        "cruxeval.jsonl",
        "8368b81047dc5014e4caf5a2f97604eff7644e0ecd7415e3ceeb184bbc2e0c96"),
    # prm800k stores the file in Git LFS; media.githubusercontent.com serves its bytes.
    "math500": Source(
        "https://media.githubusercontent.com/media/openai/prm800k/main/prm800k/math_splits/"
        "test.jsonl",
        "math500_test.jsonl",
        "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132"),
}


def _fetch(url: str, timeout_s: float) -> bytes:
  with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (pinned URLs)
    return response.read()


def download(benchmark: str, directory: str | os.PathLike, *, source: Source | None = None,
             timeout_s: float = 60.0, fetch: Callable[[str, float], bytes] = _fetch) -> str:
  """Fetches the official file of `benchmark` into `directory` and returns its path.

  Only runs when called (evals never download on their own). An existing file
  with the right sha256 is kept; a download whose sha256 differs is refused
  (nothing is written), as is a missing network (RuntimeError saying so).
  """
  if benchmark not in SOURCES:
    raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {tuple(SOURCES)}")
  source = source or SOURCES[benchmark]
  directory = os.fspath(directory)
  path = os.path.join(directory, source.filename)
  if os.path.isfile(path):
    with open(path, "rb") as f:
      if hashlib.sha256(f.read()).hexdigest() == source.sha256:
        return path
  try:
    data = fetch(source.url, timeout_s)
  except (urllib.error.URLError, OSError) as e:
    raise RuntimeError(f"could not download {benchmark} from {source.url} ({e}); without a "
                       f"network, copy the file to {path} yourself") from None
  digest = hashlib.sha256(data).hexdigest()
  if digest != source.sha256:
    raise BenchmarkFileError(f"{source.url}: sha256 {digest} differs from the pinned "
                             f"{source.sha256}; refusing to use it")
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{source.filename}.")
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  os.replace(tmp, path)
  return path
