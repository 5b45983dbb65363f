"""FORMATS.md rules 6 and 7 from real execution: comprehensions, generator expressions
and lambdas are frames of their own, and reprs carry no memory addresses.

Every program is traced by the tracer (one batch) and run under a bare `sys.settrace`
recorder (settrace_reference.py, another process); the trace text, parsed back
strictly with `".."` resolved, must give the recorder's events, lines and real locals
at every frame.
"""

import json
import os
import subprocess
import sys

import pytest

from data_pipelines.traces import executors
from data_pipelines.traces import trace as trace_module
from data_pipelines.traces import tracer_program as tp
from data_pipelines.traces.format import format_trace
from data_pipelines.traces.frames import CallFrame, ExceptionFrame, LineFrame, ReturnFrame
from data_pipelines.traces.parse import TraceParseError, parse_trace
from data_pipelines.traces.sources import TraceRequest, cruxeval_context
from data_pipelines.traces.trace import TraceLimits, run_tracer_items, trace_requests

EXEC = executors.unsandboxed_subprocess_executor
REFERENCE = os.path.join(os.path.dirname(__file__), "settrace_reference.py")
M = "def main():  # << START_OF_TRACE\n"

PROGRAMS = {
    "list_set_dict": M + """\
    xs = [3, 1, 2]
    k = 10
    a = [x * k for x in xs]
    s = {x % 2 for x in xs}
    d = {x: x * x for x in xs if x > 1}
    return a, s, d
""",
    "genexpr_consumers": M + """\
    words = ["ab", "", "cd"]
    n = sum(len(w) for w in words)
    j = "-".join(w.upper() for w in words if w)
    e = any(w == "" for w in words)
    first = next(w for w in words if w.startswith("c"))
    return n, j, e, first
""",
    "nested": M + """\
    grid = [[i * j for j in range(i)] for i in range(3)]
    flat = [y for row in grid for y in row if y >= 0]
    pairs = {(a, b) for a in range(2)
             for b in range(a)}
    return grid, flat, pairs
""",
    "lambdas": M + """\
    xs = [3, -1, 2]
    offset = 1
    s = sorted(xs, key=lambda v: abs(v - offset))
    m = list(map(lambda v: v * 2, xs))
    f = (lambda a, b=2: a + b)(5)
    return s, m, f
""",
    "context_functions": """
def square(n):
    return n * n
def keep(n):
    return n % 2 == 1
""" + M + """\
    xs = [1, 2, 3]
    a = [square(x) for x in xs if keep(x)]
    t = sum(square(x) for x in a)
    return a, t
""",
    "reprs": """
class Foo:
    pass
def helper():
    return 1
""" + M + """\
    f = Foo()
    g = helper
    h = lambda: 0
    it = iter([1, 2])
    gen = (c for c in "ab")
    return [f, g, h, it, gen, [x for x in [f]]]
""",
    "cruxeval": cruxeval_context(
        "def f(text):\n    return ''.join(c.upper() for c in text if c.isalpha())", "'a1b'"),
}


@pytest.fixture(scope="module")
def results():
  requests = [TraceRequest(c, id=k) for k, c in PROGRAMS.items()]
  out = {r.id: r for r in trace_requests(requests, executor=EXEC)}
  for name, result in out.items():
    assert result.ok, (name, result.status, result.reason)
  return out


@pytest.fixture(scope="module")
def reference():
  proc = subprocess.run([sys.executable, REFERENCE], input=json.dumps(list(PROGRAMS.values())),
                        capture_output=True, text=True, timeout=60, check=True,
                        env={**os.environ, "PYTHONHASHSEED": "0"})
  return dict(zip(PROGRAMS, json.loads(proc.stdout)))


def as_events(trace, context):
  """(event, source line, locals or value) of each frame, `".."` resolved."""
  out = []
  for f in trace.frames:
    payload = dict(f.locals) if isinstance(f, (CallFrame, LineFrame)) else f.value
    out.append((f.event, f.source_line, payload))
  return out


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_parse_and_resolve_equal_the_real_events_and_locals(name, results, reference):
  context = PROGRAMS[name]
  text = format_trace(results[name].trace)
  parsed = parse_trace(text)  # strict: canonical diff encoding, no addresses
  lines = tp.context_lines(context)
  truth = [(event, tp.source_line(lines, lineno), payload)
           for event, lineno, payload in reference[name]]
  assert as_events(parsed, context) == truth
  assert '".."' in text  # the diff encoding was exercised, and undone by the parser


def _frames_on(trace, line_text):
  return [f for f in trace.frames if f.source_line.strip() == line_text]


def test_a_list_comprehension_is_a_call_a_line_per_iteration_and_a_return(results):
  trace = results["list_set_dict"].trace
  frames = _frames_on(trace, "a = [x * k for x in xs]")
  # main's line, then the <listcomp> frame: call (.0 and the outer k it reads), a
  # line event on entry and one per iteration, and the return of the built list.
  assert [f.event for f in frames] == ["line", "call"] + ["line"] * 4 + ["return"]
  assert frames[1].locals == {".0": "<list_iterator object>", "k": "10"}
  assert [f.locals.get("x") for f in frames[2:6]] == [None, "3", "1", "2"]
  assert frames[-1].value == "[30, 10, 20]"
  set_call = _frames_on(trace, "s = {x % 2 for x in xs}")[1]
  assert set_call.locals == {".0": "<list_iterator object>"}  # reads no outer variable
  assert _frames_on(trace, "d = {x: x * x for x in xs if x > 1}")[-1].value == "{3: 9, 2: 4}"


def test_generator_expressions_yield_through_return_frames(results):
  trace = results["genexpr_consumers"].trace
  summed = _frames_on(trace, "n = sum(len(w) for w in words)")
  # Each resume is a call event and each yield a return event (rule 1), as for a
  # generator function; exhaustion returns None.
  assert [f.value for f in summed if isinstance(f, ReturnFrame)] == ["2", "0", "2", "None"]
  # next() takes one item; the abandoned generator is closed: GeneratorExit, then None.
  first = _frames_on(trace, 'first = next(w for w in words if w.startswith("c"))')
  assert [(f.event, getattr(f, "value", None)) for f in first[-3:]] == [
      ("call", None), ("exception", "GeneratorExit()"), ("return", "None")]
  assert trace.return_value == "(4, 'AB-CD', True, 'cd')"


def test_nested_comprehensions_nest_frames(results):
  trace = results["nested"].trace
  on_line = _frames_on(trace, "grid = [[i * j for j in range(i)] for i in range(3)]")
  calls = [f for f in on_line if isinstance(f, CallFrame)]
  # The outer listcomp, then one inner listcomp per i (it reads the outer i).
  assert [sorted(f.locals) for f in calls] == [[".0"]] + [[".0", "i"]] * 3
  assert [f.value for f in on_line if isinstance(f, ReturnFrame)] == [
      "[]", "[0]", "[0, 2]", "[[], [0], [0, 2]]"]
  # A comprehension over two physical lines: line events on both.
  assert {f.source_line for f in trace.frames if "for b in range(a)" in f.source_line}


def test_lambdas_passed_to_sorted_and_map(results):
  trace = results["lambdas"].trace
  sort_calls = [f for f in _frames_on(trace, "s = sorted(xs, key=lambda v: abs(v - offset))")
                if isinstance(f, CallFrame)]
  assert [f.locals for f in sort_calls] == [{"v": v, "offset": "1"} for v in ("3", "-1", "2")]
  map_returns = [f.value for f in _frames_on(trace, "m = list(map(lambda v: v * 2, xs))")
                 if isinstance(f, ReturnFrame)]
  assert map_returns == ["6", "-2", "4"]
  assert trace.return_value == "([2, 3, -1], [6, -2, 4], 7)"


def test_context_functions_called_inside_a_comprehension(results):
  trace = results["context_functions"].trace
  calls = [f.source_line.strip() for f in trace.frames if isinstance(f, CallFrame)]
  assert calls == ["def main():", "a = [square(x) for x in xs if keep(x)]",
                   "def keep(n):", "def square(n):", "def keep(n):", "def keep(n):",
                   "def square(n):", "t = sum(square(x) for x in a)", "def square(n):",
                   "t = sum(square(x) for x in a)", "def square(n):",
                   "t = sum(square(x) for x in a)"]
  assert trace.return_value == "([1, 9], 82)"


def test_reprs_carry_no_addresses(results):
  trace = results["reprs"].trace
  text = format_trace(trace)
  assert " at 0x" not in text
  assert trace.return_value == (
      "[<__main__.Foo object>, <function helper>, <function main.<locals>.<lambda>>, "
      "<list_iterator object>, <generator object main.<locals>.<genexpr>>, "
      "[<__main__.Foo object>]]")


def test_addresses_are_refused_by_the_strict_parser_and_the_formatter(results):
  trace = results["reprs"].trace
  text = format_trace(trace).replace("<__main__.Foo object>", "<__main__.Foo object at 0x7f3a2c>")
  with pytest.raises(TraceParseError, match="memory address"):
    parse_trace(text)
  parse_trace(text, strict=False)  # a model's output is still readable when not strict
  frames = list(trace.frames)
  k = next(i for i, f in enumerate(frames) if isinstance(f, ReturnFrame))
  frames[k] = ReturnFrame(frames[k].source_line, "<Foo object at 0xdead>")
  with pytest.raises(ValueError, match=f"frame {k}: value .* memory address"):
    format_trace(trace.__class__(trace.context, tuple(frames), trace.ended))
  assert tp.mask_addresses("<a at 0x1F> at 0xff") == "<a>"


def test_cruxeval_context_with_a_generator_expression(results, reference):
  trace = results["cruxeval"].trace
  assert trace.return_value == "'AB'"
  genexpr_calls = [f for f in trace.frames if isinstance(f, CallFrame) and ".0" in f.locals]
  assert len(genexpr_calls) == 3  # start, and a resume after each yielded item ('A', 'B')
  assert genexpr_calls[0].locals == {".0": "<str_ascii_iterator object>"}


def test_the_tracer_refuses_another_python_minor_version():
  """Run the real tracer program with a faked sys.version_info: the host stops with
  a message naming both versions and the reason."""
  assert tp.python_version_error((3, 11, 9)) is None
  assert "3.12" in tp.python_version_error((3, 12, 1))

  def fake_312(program, **kw):
    fake = "\nsys.version_info = (3, 12, 1, 'final', 0)\ndef main():\n"
    assert "\ndef main():\n" in program
    return EXEC(program.replace("\ndef main():\n", fake, 1), **kw)

  with pytest.raises(RuntimeError, match=r"needs Python 3\.11 .* Python 3\.12\.1.*inlines"):
    run_tracer_items([{"context": PROGRAMS["lambdas"], "stdin": ""}], TraceLimits(), fake_312)
  with pytest.raises(RuntimeError, match=r"needs Python 3\.11"):
    trace_module._check_python({"status": "ok", "python": "3.13.0"})  # pylint: disable=protected-access
