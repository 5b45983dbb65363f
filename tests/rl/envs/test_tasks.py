"""Task files: valid records become Tasks; every bad record is skipped and counted with
its file and line; a file without a valid task is an error."""

import gzip
import json

import pytest

from cwm_jax.rl.envs.tasks import (CodeProblem, TaskFileError, TaskFileStats, TaskRecordError,
                                   load_tasks, parse_code, parse_math)

STDIN = {"id": "sum", "prompt": "Print a+b.", "tests": [{"input": "1 2\n", "output": "3\n"}],
         "time_limit_s": 2, "memory_mb": 512}
CALL = {"id": "add", "prompt": "Return a+b.", "fn_name": "add",
        "tests": [{"args": [1, 2], "output": 3}], "starter_code": "def add(a, b):"}
MATH = {"id": 7, "problem": "1+1?", "answer": 2}


def write(path, lines):
  path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
  return path


def test_code_and_math_records_load(tmp_path):
  nested = {"id": "n", "prompt": "p",
            "tests": {"fn_name": "f", "tests": [{"args": [], "output": None}]}}
  stats = TaskFileStats()
  tasks = load_tasks(write(tmp_path / "code.jsonl", [STDIN, "", CALL, nested]), "code", stats=stats)
  assert [(t.id, t.env) for t in tasks] == [("sum", "code"), ("add", "code"), ("n", "code")]
  assert tasks[0].data == STDIN and stats.loaded == 3 and stats.n_skipped == 0
  assert parse_code(tasks[0].data) == CodeProblem("Print a+b.", tuple(STDIN["tests"]), None, "",
                                                 2.0, 512)
  call = parse_code(tasks[1].data)
  assert (call.fn_name, call.starter_code, call.time_limit_s) == ("add", "def add(a, b):", None)
  assert parse_code(tasks[2].data).fn_name == "f"

  [math] = load_tasks(write(tmp_path / "math.jsonl", [MATH]), "math", env="math_python")
  assert (math.id, math.env) == ("7", "math_python")
  assert parse_math(math.data).answer == "2"


BAD_CODE = [
    ("{not json", "bad_json"),
    ("[1, 2]", "not_an_object"),
    ({"prompt": "p", "tests": STDIN["tests"]}, "missing_field"),            # no id
    ({**STDIN, "id": ""}, "bad_value"),
    ({**STDIN, "id": True}, "wrong_type"),
    ({**STDIN, "prompt": 3}, "wrong_type"),
    ({"id": "x", "tests": STDIN["tests"]}, "missing_field"),               # no prompt
    ({**STDIN, "tests": []}, "bad_value"),
    ({**STDIN, "tests": "1 2"}, "wrong_type"),
    ({**STDIN, "tests": [{"input": "1"}]}, "missing_field"),               # no output
    ({**STDIN, "tests": [{"input": 1, "output": "1"}]}, "wrong_type"),
    ({**STDIN, "tests": ["1 2"]}, "wrong_type"),
    ({**CALL, "tests": [{"input": "1", "output": "1"}]}, "missing_field"),  # no args
    ({**CALL, "tests": [{"args": [1]}]}, "missing_field"),
    ({**CALL, "fn_name": "not a name"}, "bad_value"),
    ({**STDIN, "time_limit_s": 0}, "bad_value"),
    ({**STDIN, "time_limit_s": "2"}, "wrong_type"),
    ({**STDIN, "memory_mb": 1.5}, "wrong_type"),
    ({**STDIN, "memory_mb": -1}, "bad_value"),
]


@pytest.mark.parametrize("record, reason", BAD_CODE)
def test_a_bad_code_record_is_skipped_and_counted(tmp_path, record, reason):
  path = write(tmp_path / "tasks.jsonl", [{**STDIN, "id": "good"}, record])
  stats = TaskFileStats()
  tasks = load_tasks(path, "code", stats=stats)
  assert [t.id for t in tasks] == ["good"]
  assert stats.skipped == {reason: 1} and stats.loaded == 1
  assert stats.problems[0].startswith(f"{path}:2: {reason}: ")
  if isinstance(record, dict) and record.get("id") not in (None, "", True):
    with pytest.raises(TaskRecordError) as e:  # the same check the env applies to Task.data
      parse_code(record)
    assert e.value.reason == reason


@pytest.mark.parametrize("record, reason", [
    ({"id": "m", "answer": "1"}, "missing_field"),
    ({"id": "m", "problem": "p", "answer": ""}, "bad_value"),
    ({"id": "m", "problem": "p", "answer": [1]}, "wrong_type"),
    ({"id": "m", "problem": " ", "answer": "1"}, "bad_value"),
])
def test_a_bad_math_record_is_skipped_and_counted(tmp_path, record, reason):
  stats = TaskFileStats()
  tasks = load_tasks(write(tmp_path / "m.jsonl", [MATH, record]), "math", stats=stats)
  assert len(tasks) == 1 and stats.skipped == {reason: 1}


def test_duplicate_ids_are_skipped_across_files_and_counted(tmp_path):
  first = write(tmp_path / "a.jsonl", [STDIN, CALL])
  second = tmp_path / "b.jsonl.gz"
  with gzip.open(second, "wt") as f:
    f.write(json.dumps(STDIN) + "\n" + json.dumps({**STDIN, "id": "new"}) + "\n")
  stats = TaskFileStats()
  tasks = load_tasks([first, second], "code", stats=stats)
  assert [t.id for t in tasks] == ["sum", "add", "new"]
  assert stats.skipped == {"duplicate_id": 1}
  assert stats.problems == [f"{second}:1: duplicate_id: id 'sum' was already loaded"]
  assert stats.summary() == "3 tasks loaded, 1 records skipped (duplicate_id=1)"


@pytest.mark.parametrize("lines", [[], ["", "  "], ["{oops", {"id": "x"}]])
def test_a_file_without_a_valid_task_is_an_error_naming_it(tmp_path, lines):
  path = write(tmp_path / "empty.jsonl", lines)
  with pytest.raises(TaskFileError, match=str(path)):
    load_tasks(path, "code")


def test_unknown_kind_is_refused(tmp_path):
  with pytest.raises(ValueError, match="kind"):
    load_tasks(write(tmp_path / "t.jsonl", [STDIN]), "swe")
