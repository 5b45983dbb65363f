"""Repository-level traces on a tiny repository (2 modules + a test file): cuts start at
repository functions called from tests, respect the maximum depth and the step-in
probability, and every cut parses with the strict parser. Traced with the test-only
unsandboxed executor (trusted code), plus one run in cwm_jax.sandbox when available."""

import pytest

from data_pipelines.programs.repo_traces import cut_context, discover_tests, trace_repo
from data_pipelines.traces import executors
from data_pipelines.traces import tracer_program as tp
from data_pipelines.traces.format import format_trace
from data_pipelines.traces.frames import CallFrame, ExceptionFrame, ReturnFrame
from data_pipelines.traces.parse import parse_trace
from data_pipelines.traces.trace import TraceLimits, trace_context

EXEC = executors.unsandboxed_subprocess_executor

REPO = {
    "pkg/__init__.py": "",
    "pkg/util.py": (
        "def base(x):\n"
        "    return x % 7\n"
        "\n"
        "def double(x):\n"
        "    y = base(x) * 2\n"
        "    return y\n"
        "\n"
        "def inc(x):\n"
        "    return double(x) - x + 1\n"
        "\n"
        "def check(x):\n"
        "    if x < 0:\n"
        "        raise ValueError('negative')\n"
        "    return x\n"),
    "pkg/core.py": (
        "from pkg.util import check, inc\n"
        "\n"
        "def total(xs):\n"
        "    s = 0\n"
        "    for x in xs:\n"
        "        s += inc(x)\n"
        "    return s\n"
        "\n"
        "class Acc:\n"
        "    def __init__(self):\n"
        "        self.items = []\n"
        "\n"
        "    def add(self, x):\n"
        "        self.items.append(check(x))\n"
        "        return len(self.items)\n"),
    "tests/test_core.py": (
        "import pytest\n"
        "from pkg.core import Acc, total\n"
        "from pkg.util import base\n"
        "\n"
        "def helper():\n"
        "    return total(list(range(20)))\n"
        "\n"
        "def test_total():\n"
        "    assert total([1, 2, 3]) == sum(1 + (2 * (x % 7)) - x for x in [1, 2, 3])\n"
        "    helper()\n"
        "\n"
        "def test_needs_fixture(tmp_path):\n"
        "    pass\n"
        "\n"
        "class TestAcc:\n"
        "    def test_add(self):\n"
        "        acc = Acc()\n"
        "        assert acc.add(base(3)) == 1\n"
        "        with pytest.raises(ValueError):\n"
        "            acc.add(-1)\n"
        "\n"
        "def test_fails():\n"
        "    assert total([]) == 1\n"),
}


def _depths(trace):
  """Nesting level (1 = the traced function) of every call frame."""
  depth, levels = 0, []
  for frame in trace.frames:
    if isinstance(frame, CallFrame):
      depth += 1
      levels.append(depth)
    elif isinstance(frame, ReturnFrame):
      depth -= 1
  assert depth == 0
  return levels


def _cuts(**kw):
  results = trace_repo(REPO, executor=EXEC, **kw)
  assert all(r.ok for r in results), [(r.id, r.reason) for r in results if not r.ok]
  return {r.id: r.trace for r in results}


def test_discovers_plain_and_class_tests_without_fixtures():
  assert discover_tests(REPO) == ["tests/test_core.py::test_total",
                                  "tests/test_core.py::TestAcc::test_add",
                                  "tests/test_core.py::test_fails"]


def test_cuts_are_the_repository_functions_called_from_tests():
  cuts = _cuts(max_depth=1, step_in_prob=1.0)
  assert sorted(cuts) == sorted([
      "tests/test_core.py::test_total#0:pkg/core.py:total",
      "tests/test_core.py::test_total#1:pkg/core.py:total",
      "tests/test_core.py::TestAcc::test_add#0:pkg/core.py:Acc.__init__",
      "tests/test_core.py::TestAcc::test_add#1:pkg/util.py:base",
      "tests/test_core.py::TestAcc::test_add#2:pkg/core.py:Acc.add",
      "tests/test_core.py::TestAcc::test_add#3:pkg/core.py:Acc.add",
      "tests/test_core.py::test_fails#0:pkg/core.py:total",
  ])
  test_file_lines = set(REPO["tests/test_core.py"].split("\n"))
  for trace in cuts.values():
    for frame in trace.frames:
      assert frame.source_line.rstrip("\n") not in test_file_lines - {""}


@pytest.mark.parametrize("max_depth", [0, 1, 2, 5])
def test_step_in_probability_one_follows_every_callee_within_depth(max_depth):
  trace = _cuts(max_depth=max_depth, step_in_prob=1.0)[
      "tests/test_core.py::test_total#0:pkg/core.py:total"]
  levels = _depths(trace)
  # total -> inc (x3) -> double -> base: a chain 4 deep
  assert max(levels) == min(max_depth, 3) + 1
  calls_per_level = [levels.count(k) for k in range(1, max(levels) + 1)]
  assert calls_per_level == [1, 3, 3, 3][:len(calls_per_level)]


@pytest.mark.parametrize("max_depth", [0, 3])
def test_step_in_probability_zero_gives_only_the_traced_function(max_depth):
  for trace in _cuts(max_depth=max_depth, step_in_prob=0.0).values():
    assert _depths(trace) == [1]
    assert isinstance(trace.frames[0], CallFrame) and isinstance(trace.frames[-1], ReturnFrame)


def test_partial_step_in_is_seeded_and_mixed():
  key = "tests/test_core.py::test_total#1:pkg/core.py:total"  # 20 calls of inc
  first = _cuts(max_depth=1, step_in_prob=0.5, seed=7)
  assert first == _cuts(max_depth=1, step_in_prob=0.5, seed=7)
  stepped = _depths(first[key]).count(2)
  assert 3 <= stepped <= 17
  others = [_depths(_cuts(max_depth=1, step_in_prob=0.5, seed=s)[key]).count(2)
            for s in (8, 9)]
  assert any(n != stepped for n in others)


def test_every_cut_parses_strictly_with_a_marked_context():
  cuts = _cuts(max_depth=2, step_in_prob=1.0)
  for cut_id, trace in cuts.items():
    text = format_trace(trace)
    assert parse_trace(text) == trace
    marked = [l for l in trace.context.split("\n") if l.endswith(tp.MARKER)]
    assert len(marked) == 1
    assert tp.source_line([marked[0]], 1) == trace.frames[0].source_line
    assert trace.context.startswith("# file: " + cut_id.split(":")[-2])


def test_exceptions_inside_a_cut():
  cuts = _cuts(max_depth=1, step_in_prob=1.0)
  trace = cuts["tests/test_core.py::TestAcc::test_add#3:pkg/core.py:Acc.add"]
  exceptions = [f for f in trace.frames if isinstance(f, ExceptionFrame)]
  assert [(f.source_line.strip(), f.value) for f in exceptions] == [
      ("raise ValueError('negative')", "ValueError('negative')"),  # in check (stepped into)
      ("self.items.append(check(x))", "ValueError('negative')")]  # propagating through add
  assert trace.return_value == "None"  # the exception propagated out of add


def test_context_lists_the_files_of_the_cut():
  context, offsets = cut_context(REPO, {"file": "pkg/core.py", "line": 3, "frames": [
      ["call", "pkg/core.py", 3, "{}"], ["call", "pkg/util.py", 8, "{}"]]})
  lines = context.split("\n")
  assert lines[0] == "# file: pkg/core.py" and offsets == {"pkg/core.py": 1, "pkg/util.py": 17}
  assert lines[offsets["pkg/core.py"] + 3 - 1] == "def total(xs):" + tp.MARKER
  assert lines[offsets["pkg/util.py"] - 1] == "# file: pkg/util.py"
  assert lines[offsets["pkg/util.py"] + 8 - 1] == "def inc(x):"


def test_in_the_sandbox():
  if not executors.sandbox_available():
    pytest.skip("cwm_jax.sandbox is not available")
  try:
    results = trace_repo(REPO, tests=["tests/test_core.py::test_total"], max_depth=5,
                         step_in_prob=1.0, executor=executors.sandbox_executor)
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f"the sandbox cannot run here: {e}")
  unsandboxed = _cuts(max_depth=5, step_in_prob=1.0)
  assert [r.status for r in results] == ["ok", "ok"]
  assert {r.id: r.trace for r in results} == {
      k: v for k, v in unsandboxed.items() if "::test_total#" in k}


def test_event_limit_applies_per_cut_and_generators_are_not_roots():
  repo = dict(REPO)
  repo["pkg/gen.py"] = "def evens(n):\n    for i in range(n):\n        yield 2 * i\n"
  repo["tests/test_gen.py"] = ("from pkg.gen import evens\nfrom pkg.core import total\n\n"
                               "def test_gen():\n    assert total(evens(3)) == 9\n")
  tests = ["tests/test_core.py::test_total", "tests/test_gen.py::test_gen"]
  results = trace_repo(repo, tests=tests, max_depth=1, step_in_prob=1.0,
                       limits=TraceLimits(max_events=60),
                       executor=EXEC)
  assert [(r.id, r.status) for r in results] == [
      ("tests/test_core.py::test_total#0:pkg/core.py:total", "ok"),
      ("tests/test_core.py::test_total#1:pkg/core.py:total", "too_long"),  # 20 calls of inc
      ("tests/test_gen.py::test_gen#0:pkg/core.py:total", "ok")]
  # the generator is stepped into as a callee: one call frame per resumption
  assert _depths(results[2].trace).count(2) == 4 + 3  # evens (3 yields + the end), inc x3
  assert results[2].trace.return_value == "9"


COMP_REPO = {
    "pkg/__init__.py": "",
    "pkg/comp.py": (
        "def scale(x):\n"
        "    return x * 2\n"
        "\n"
        "def comp(xs):\n"
        "    ys = [scale(x) for x in xs if x]\n"
        "    total = sum(y for y in ys)\n"
        "    return sorted(ys, key=lambda v: -v), total\n"),
    "tests/test_comp.py": (
        "from pkg.comp import comp\n"
        "\n"
        "def test_comp():\n"
        "    assert comp([1, 0, 2]) == ([4, 2], 6)\n"),
}


def _frame_tuples(frames):
  return [(f.event, f.source_line, getattr(f, "locals", None), getattr(f, "value", None))
          for f in frames]


@pytest.mark.parametrize("max_depth", [0, 1])
def test_comprehensions_and_lambdas_in_a_cut_are_frames_of_their_own(max_depth):
  """A cut's comprehension, generator-expression and lambda frames (rule 6) are always
  traced and add no depth; with every callee stepped into, the cut equals the
  function-level trace of the same function (its frames between comp's call and return)."""
  results = trace_repo(COMP_REPO, max_depth=max_depth, step_in_prob=1.0, executor=EXEC)
  assert [r.status for r in results] == ["ok"]
  cut = results[0].trace
  calls = [f.source_line.strip() for f in cut.frames if isinstance(f, CallFrame)]
  comp_line, gen_line = "ys = [scale(x) for x in xs if x]", "total = sum(y for y in ys)"
  scale = ["def scale(x):"] if max_depth >= 1 else []
  assert calls == (["def comp(xs):", comp_line] + scale * 2 + [gen_line] * 3 +
                   ["return sorted(ys, key=lambda v: -v), total"] * 2)
  if max_depth == 1:
    context = "\n" + COMP_REPO["pkg/comp.py"] + "def main():" + tp.MARKER + "\n" + \
        "    return comp([1, 0, 2])\n"
    function_level = trace_context(context, executor=EXEC).trace
    assert _frame_tuples(function_level.frames[2:-1]) == _frame_tuples(cut.frames)
