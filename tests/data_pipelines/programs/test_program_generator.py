"""The synthetic program generator: deterministic, valid Python, varied features, and
most programs trace ok within the limits (traced in the test-only unsandboxed executor:
the programs come from our own grammar)."""

import ast
import collections
import statistics

import pytest

from data_pipelines.programs.filter import filter_programs
from data_pipelines.programs.generate import HELPER_NAMES, generate_programs
from data_pipelines.traces import executors
from data_pipelines.traces.format import format_trace
from data_pipelines.traces.parse import parse_trace
from data_pipelines.traces.sources import cruxeval_requests
from data_pipelines.traces.trace import trace_requests

EXEC = executors.unsandboxed_subprocess_executor


def test_same_seed_same_programs():
  assert list(generate_programs(3, 30)) == list(generate_programs(3, 30))
  assert list(generate_programs(3, 5)) == list(generate_programs(3, 30))[:5]  # i only
  assert [r["code"] for r in generate_programs(3, 30)] != [
      r["code"] for r in generate_programs(4, 30)]
  ids = [r["id"] for r in generate_programs(3, 30)]
  assert len(set(ids)) == 30


@pytest.mark.parametrize("seed", [0, 1])
def test_programs_parse_and_define_f(seed):
  for record in generate_programs(seed, 300):
    tree = ast.parse(record["code"])
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert names[-1] == "f", record["code"]
    ast.parse(f"f({record['input']})")  # the input is an argument list


def _features(code: str) -> collections.Counter:
  found = collections.Counter()
  for node in ast.walk(ast.parse(code)):
    found[type(node).__name__] += 1
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      found["helper_call"] += node.func.id in HELPER_NAMES
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
      found["method." + node.func.attr] += 1
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
      found["str_literal"] += 1
  return found


def test_grammar_covers_the_features():
  programs = list(generate_programs(0, 200))
  per_program = [_features(r["code"]) for r in programs]
  having = collections.Counter(k for f in per_program for k, v in f.items() if v)
  # share of programs that have each feature
  for feature, share in [("For", 0.3), ("While", 0.15), ("If", 0.5), ("Try", 0.3),
                         ("Raise", 0.2), ("helper_call", 0.4), ("Dict", 0.3),
                         ("str_literal", 0.8), ("Subscript", 0.3), ("BoolOp", 0.05),
                         ("Compare", 0.5), ("ListComp", 0.05), ("DictComp", 0.03),
                         ("GeneratorExp", 0.02), ("JoinedStr", 0.01), ("Break", 0.02),
                         ("method.append", 0.1), ("method.get", 0.1), ("method.split", 0.1),
                         ("method.items", 0.05), ("method.pop", 0.1)]:
    assert having[feature] >= share * len(programs), (feature, having[feature])
  sizes = [len(r["code"].split("\n")) for r in programs]
  assert min(sizes) < 12 and max(sizes) > 35


@pytest.fixture(scope="module")
def filtered():
  records = list(generate_programs(0, 200))
  kept, dropped = filter_programs(records, executor=EXEC, max_events=300, num_workers=2)
  return records, kept, dropped


def test_most_programs_trace_ok_with_a_spread_of_lengths(filtered):
  records, kept, dropped = filtered
  assert len(kept) + sum(dropped.values()) == len(records)
  assert len(kept) > 0.7 * len(records), dropped
  assert set(dropped) <= {"raised", "too_long/max_events", "too_long/max_bytes",
                          "timeout/timeout", "error/entry_error", "nondeterministic"}, dropped
  events = [r["events"] for r in kept]
  assert max(events) <= 300
  assert min(events) < 15 and max(events) > 80
  deciles = statistics.quantiles(events, n=10)
  assert deciles[-1] > 2 * deciles[0]


def test_kept_records_have_outputs_and_traces_round_trip(filtered):
  _, kept, _ = filtered
  sample = kept[:40]
  results = trace_requests(cruxeval_requests(sample), executor=EXEC)
  for record, result in zip(sample, results):
    assert result.ok and result.exception is None
    assert result.trace.return_value == record["output"]
    assert len(result.trace.frames) == record["events"]
    assert parse_trace(format_trace(result.trace)) == result.trace


def test_filter_counts_each_drop_reason():
  records = [
      {"id": "ok", "code": "def f(x):\n    return x + 1", "input": "1"},
      {"id": "raises", "code": "def f(x):\n    return x // 0", "input": "1"},
      {"id": "loops", "code": "def f(x):\n    while True:\n        x += 1", "input": "1"},
      {"id": "long", "code": "def f(x):\n    for i in range(x):\n        x += 0\n    return x",
       "input": "100"},
      {"id": "bad", "code": "def f(x:\n    return x", "input": "1"},
  ]
  kept, dropped = filter_programs(records, executor=EXEC, max_events=50, timeout_s=0.5,
                                  check_determinism=False)
  assert [r["id"] for r in kept] == ["ok"] and kept[0]["output"] == "2"
  assert dropped == {"raised": 1, "too_long/max_events": 2, "error/syntax_error": 1}
