"""Benchmark loaders: the dev files load completely; malformed files fail with the file,
line and field named; .jsonl.gz works; downloads are checked against the pinned sha256."""

import gzip
import hashlib
import json
import shutil

import pytest

from cwm_jax.evals import data

from tests.evals.conftest import dev_file

DEV = {"humaneval": ("humaneval_dev.jsonl", 40), "mbpp": ("mbpp_dev.jsonl", 100),
       "cruxeval": ("cruxeval_dev.jsonl", 200), "math500": ("math500_dev.jsonl", 100)}


@pytest.mark.parametrize("bench", sorted(DEV))
def test_dev_files_load_every_row(bench):
  name, rows = DEV[bench]
  path = dev_file(name)
  records = data.load_benchmark(bench, path)
  assert len(records) == rows
  with open(path, encoding="utf-8") as f:
    raw = [json.loads(line) for line in f]
  id_field = {"humaneval": "task_id", "mbpp": "task_id", "cruxeval": "id",
              "math500": "unique_id"}[bench]
  assert [getattr(r, id_field) for r in records] == [r[id_field] for r in raw]


def test_humaneval_gz(tmp_path):
  src = dev_file("humaneval_dev.jsonl")
  gz = tmp_path / "HumanEval.jsonl.gz"
  with open(src, "rb") as f, gzip.open(gz, "wb") as g:
    shutil.copyfileobj(f, g)
  assert data.load_humaneval(gz) == data.load_humaneval(src)
  gz.write_bytes(gz.read_bytes()[:500])  # truncated download
  with pytest.raises(data.BenchmarkFileError, match="unreadable"):
    data.load_humaneval(gz)


def _write(tmp_path, lines):
  path = tmp_path / "bad.jsonl"
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


GOOD_CRUX = json.dumps({"id": "sample_0", "code": "def f(x): return x", "input": "1",
                        "output": "1"})


@pytest.mark.parametrize("bench, lines, message", [
    ("cruxeval", [GOOD_CRUX, "{not json"], r"bad.jsonl:2: not valid JSON"),
    ("cruxeval", [GOOD_CRUX, "[1, 2]"], r"bad.jsonl:2: expected a JSON object, got list"),
    ("cruxeval", ['{"id": "a", "code": "x", "input": "1"}'],
     r"bad.jsonl:1: missing field 'output' \(expected a string\)"),
    ("cruxeval", [GOOD_CRUX, "", GOOD_CRUX], r"bad.jsonl:3: id 'sample_0' repeats line 1"),
    ("mbpp", ['{"task_id": "7", "text": "t", "code": "c", "test_list": ["assert 1"]}'],
     r"bad.jsonl:1: field 'task_id' must be an integer, got str"),
    ("mbpp", ['{"task_id": 7, "text": "t", "code": "c", "test_list": []}'],
     r"bad.jsonl:1: field 'test_list' is empty"),
    ("humaneval", ['{"task_id": "H/0", "prompt": "p", "canonical_solution": "s", "test": "t", '
                   '"entry_point": "not an id"}'], r"'entry_point' must be a Python identifier"),
    ("math500", ['{"unique_id": "u", "problem": "p", "answer": 5}'],
     r"field 'answer' must be a string, got int"),
    ("math500", [""], r"no math500 records"),
])
def test_malformed_files_name_file_line_and_field(tmp_path, bench, lines, message):
  with pytest.raises(data.BenchmarkFileError, match=message):
    data.load_benchmark(bench, _write(tmp_path, lines))


def test_missing_file_and_unknown_benchmark(tmp_path):
  with pytest.raises(FileNotFoundError, match="download"):
    data.load_cruxeval(tmp_path / "nope.jsonl")
  with pytest.raises(ValueError, match="unknown benchmark 'humaneval_x'"):
    data.load_benchmark("humaneval_x", tmp_path)


def test_download_checks_sha256_and_reports_no_network(tmp_path):
  payload = b'{"id": "sample_0", "code": "def f(x): return x", "input": "1", "output": "1"}\n'
  source = data.Source("https://example.invalid/c.jsonl", "c.jsonl",
                       hashlib.sha256(payload).hexdigest())
  calls = []

  def fetch(url, timeout_s):
    calls.append(url)
    return payload

  path = data.download("cruxeval", tmp_path, source=source, fetch=fetch)
  assert data.load_cruxeval(path)[0].id == "sample_0" and calls == [source.url]
  data.download("cruxeval", tmp_path, source=source, fetch=fetch)  # present: not fetched again
  assert len(calls) == 1
  with pytest.raises(data.BenchmarkFileError, match="differs from the pinned"):
    data.download("cruxeval", tmp_path / "other", source=source, fetch=lambda u, t: b"junk")
  assert not (tmp_path / "other").exists()

  def offline(url, timeout_s):
    raise OSError("Network is unreachable")
  with pytest.raises(RuntimeError, match="could not download mbpp"):
    data.download("mbpp", tmp_path, fetch=offline)
