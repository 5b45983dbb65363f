"""The tracer against FORMATS.md rules 1-8: the worked example, diff encoding,
exceptions, recursion, reprs, limits and isolation (comprehension, generator-expression
and lambda frames in detail: test_inline_frames.py).

Everything runs in the unsandboxed test-only executor (trusted code). Contexts are
traced together in one batch (one tracer process) per test module to keep it fast.
"""

import json
import subprocess
import sys

import pytest

from cwm_jax.tokenizer import special_tokens as st
from data_pipelines.traces import executors
from data_pipelines.traces import tracer_program as tp
from data_pipelines.traces.format import format_trace, format_trace_readable, frame_pieces
from data_pipelines.traces.frames import CallFrame, ExceptionFrame, LineFrame, ReturnFrame
from data_pipelines.traces.sources import TraceRequest, cruxeval_context
from data_pipelines.traces.stats import TraceStats
from data_pipelines.traces.trace import TraceLimits, trace_context, trace_requests, tracer_source

EXEC = executors.unsandboxed_subprocess_executor
M = "def main():  # << START_OF_TRACE\n"

# ---------------------------------------------------------------- FORMATS.md worked example

EXAMPLE_CONTEXT = """
def f(array):
    n = array.pop()
    array.extend([n, n])
    return array
def main():  # << START_OF_TRACE
    return f([1, 1, 2, 2])
"""

# As displayed in FORMATS.md (one frame per line, "\n" written as \n).
EXAMPLE_DISPLAY = r"""<|call_sep|>{}<|action_sep|>def main():\n<|frame_sep|>
<|line_sep|>{}<|action_sep|>    return f([1, 1, 2, 2])\n<|frame_sep|>
<|call_sep|>{"array": "[1, 1, 2, 2]"}<|action_sep|>def f(array):\n<|frame_sep|>
<|line_sep|>{"array": ".."}<|action_sep|>    n = array.pop()\n<|frame_sep|>
<|line_sep|>{"array": "[1, 1, 2]", "n": "2"}<|action_sep|>    array.extend([n, n])\n<|frame_sep|>
<|line_sep|>{"array": "[1, 1, 2, 2, 2]", "n": ".."}<|action_sep|>    return array\n<|frame_sep|>
<|return_sep|><|action_sep|>    return array\n<|arg_sep|>"[1, 1, 2, 2, 2]"<|frame_sep|>
<|return_sep|><|action_sep|>    return f([1, 1, 2, 2])\n<|arg_sep|>"[1, 1, 2, 2, 2]"<|frame_sep|>
<|end_of_text|>
"""

# The same frames as they are in the data: concatenated, with real newlines.
EXAMPLE_TRACE = (
    '<|call_sep|>{}<|action_sep|>def main():\n<|frame_sep|>'
    '<|line_sep|>{}<|action_sep|>    return f([1, 1, 2, 2])\n<|frame_sep|>'
    '<|call_sep|>{"array": "[1, 1, 2, 2]"}<|action_sep|>def f(array):\n<|frame_sep|>'
    '<|line_sep|>{"array": ".."}<|action_sep|>    n = array.pop()\n<|frame_sep|>'
    '<|line_sep|>{"array": "[1, 1, 2]", "n": "2"}<|action_sep|>    array.extend([n, n])\n'
    '<|frame_sep|>'
    '<|line_sep|>{"array": "[1, 1, 2, 2, 2]", "n": ".."}<|action_sep|>    return array\n'
    '<|frame_sep|>'
    '<|return_sep|><|action_sep|>    return array\n<|arg_sep|>"[1, 1, 2, 2, 2]"<|frame_sep|>'
    '<|return_sep|><|action_sep|>    return f([1, 1, 2, 2])\n<|arg_sep|>"[1, 1, 2, 2, 2]"'
    '<|frame_sep|>'
    '<|end_of_text|>')


def test_worked_example_character_for_character():
  context = cruxeval_context("def f(array):\n    n = array.pop()\n    array.extend([n, n])\n"
                             "    return array", "[1, 1, 2, 2]")
  assert context == EXAMPLE_CONTEXT
  result = trace_context(context, executor=EXEC)
  assert result.status == "ok", result.reason
  text = format_trace(result.trace)
  assert text == ("<|begin_of_text|><|trace_context_start|>" + EXAMPLE_CONTEXT + "<|frame_sep|>" +
                  EXAMPLE_TRACE)
  prompt = format_trace_readable(result.trace).split("<|frame_sep|>\n", 1)
  assert prompt[1] == EXAMPLE_DISPLAY
  assert result.num_bytes == len(text.encode())
  assert [f.lineno for f in result.trace.frames] == [6, 7, 2, 3, 4, 5, 5, 7]


def test_special_token_strings_match_the_tokenizer():
  for name in ("BOS", "EOS", "FRAME_SEP", "ACTION_SEP", "RETURN_SEP", "CALL_SEP", "LINE_SEP",
               "EXCEPTION_SEP", "ARG_SEP", "TRACE_CONTEXT_START"):
    assert getattr(tp, name) == getattr(st, name)


# ---------------------------------------------------------------- the other rules, one batch

CONTEXTS = {
    "caught": M + """\
    a = 1
    try:
        raise KeyError("k")
    except KeyError:
        a = 2
    return a
""",
    "propagates": """
def bad(x):
    y = x + 1
    return [][y]
""" + M + """\
    v = 0
    try:
        bad(v)
    except IndexError as e:
        v = str(e)
    return v
""",
    "uncaught": M + "    x = [1]\n    return x[5]\n",
    "comprehensions": """
log = []
def h(n):
    log.append(n)
    return n + 1
""" + M + """\
    a = [h(i) for i in range(3)]
    b = sum(h(x) for x in a)
    c = {k: h(k) for k in (7,)}
    k = (lambda y: h(y))(5)
    return a, b, c, k, log
""",
    "generator": """
def gen(n):
    for i in range(n):
        yield i * 2
""" + M + """\
    t = 0
    for v in gen(2):
        t += v
    return t
""",
    "recursion": """
def fact(n):
    if n <= 1:
        return 1
    return n * fact(n - 1)
""" + M + "    return fact(3)\n",
    "objects": """
class Foo:
    def __init__(self, v):
        self.v = v
class Bar:
    def __init__(self, v):
        self.v = v
    def __repr__(self):
        return f"Bar({self.v})"
""" + M + """\
    f = Foo(1)
    b = Bar(2)
    return [f, b, f.__init__]
""",
    "unicode": M + "    s = 'é☃'  # ünïcode in the source stays as is\n    return s + '🙂'\n",
    "hash_seed": M + "    return {'apple', 'banana', 'cherry', 'date', 'elder', 'fig'}\n",
    "stdio": M + "    n = int(input())\n    print(n * 2)\n    import os\n    os.write(1, b'x')\n"
             "    return n\n",
    "open0": M + "    return open(0).read().split()\n",
    "generator_entry": M + "    yield 1\n",
    "patch_builtins": "import builtins\nbuiltins.len = lambda x: 42\n" + M + "    return len([])\n",
    "after_patch": M + "    return len([])\n",
    "del_after_return": "class D:\n    def __del__(self):\n        print('bye')\n" + M +
                        "    d = D()\n    return 1\n",
    "many_events": M + "    for i in range(20000):\n        pass\n",
    "many_bytes": M + "    s = 'x' * 300000\n    for i in range(5):\n        s = s + 'y'\n",
    "swallow_abort": M + "    try:\n        for i in range(20000):\n            pass\n"
                     "    except BaseException:\n        pass\n    return 1\n",
    "untraced_loop": "while True:\n    pass\n" + M + "    return 1\n",
    "loop_in_builtin": M + "    import itertools\n    return sum(itertools.count())\n",
    # One allocation past the address-space limit fails at once, even on a loaded
    # machine (many smaller ones, each a traced comprehension step, could hit the
    # time limit first).
    "memory": M + "    x = bytearray(4 * 10**9)\n",
    "syntax": M + "    return (\n",
    "no_marker": "def main():\n    return 1\n",
    "module_raises": "1/0\n" + M + "    return 1\n",
    "needs_args": "def main(x):  # << START_OF_TRACE\n    return x\n",
    "repr_dots": "class D:\n    def __repr__(self):\n        return '..'\n" + M +
                 "    d = D()\n    return 1\n",
    "infinite_recursion": "def r(n):\n    return r(n + 1)\n" + M + "    return r(0)\n",
    "settrace_off": M + "    import sys\n    sys.settrace(None)\n    return 1\n",
    "exit": M + "    import sys\n    sys.exit(3)\n",
}
LIMITS = TraceLimits(timeout_s=1.5, memory_mb=512)


@pytest.fixture(scope="module")
def traced():
  requests = [TraceRequest(c, stdin="21\n", id=k) for k, c in CONTEXTS.items()]
  stats = TraceStats()
  results = trace_requests(requests, limits=LIMITS, executor=EXEC, batch_size=8, num_workers=2,
                           stats=stats)
  return {r.id: r for r in results}, stats


def frames_text(result):
  return format_trace_readable(result.trace).split("<|frame_sep|>\n", 1)[1].splitlines()


def test_exception_caught_in_the_function_keeps_the_baseline(traced):
  result = traced[0]["caught"]
  assert frames_text(result)[3:7] == [
      r'<|line_sep|>{"a": ".."}<|action_sep|>        raise KeyError("k")\n<|frame_sep|>',
      r'''<|exception_sep|><|action_sep|>        raise KeyError("k")\n<|arg_sep|>'''
      r'''"KeyError('k')"<|frame_sep|>''',
      # An exception frame is neither a call nor a return frame: ".." stays valid.
      r'<|line_sep|>{"a": ".."}<|action_sep|>    except KeyError:\n<|frame_sep|>',
      r'<|line_sep|>{"a": ".."}<|action_sep|>        a = 2\n<|frame_sep|>',
  ]
  assert result.trace.return_value == "2" and result.exception is None


def test_exception_propagating_out_returns_none(traced):
  lines = frames_text(traced[0]["propagates"])
  err = '"IndexError(\'list index out of range\')"'
  assert lines[7:12] == [
      rf'<|exception_sep|><|action_sep|>    return [][y]\n<|arg_sep|>{err}<|frame_sep|>',
      r'<|return_sep|><|action_sep|>    return [][y]\n<|arg_sep|>"None"<|frame_sep|>',
      rf'<|exception_sep|><|action_sep|>        bad(v)\n<|arg_sep|>{err}<|frame_sep|>',
      # First line after the callee returned: full values, no baseline.
      r'<|line_sep|>{"v": "0"}<|action_sep|>    except IndexError as e:\n<|frame_sep|>',
      r'''<|line_sep|>{"v": "..", "e": "IndexError('list index out of range')"}'''
      r'''<|action_sep|>        v = str(e)\n<|frame_sep|>''',
  ]


def test_uncaught_exception_ends_the_trace(traced):
  result = traced[0]["uncaught"]
  assert result.ok and result.exception == "IndexError('list index out of range')"
  assert [type(f) for f in result.trace.frames[-2:]] == [ExceptionFrame, ReturnFrame]
  assert result.trace.frames[-1].value == "None" and result.trace.ended


def test_first_line_after_a_callee_returns_shows_full_values(traced):
  text = format_trace(traced[0]["generator"].trace)
  assert '<|line_sep|>{"t": "0", "v": "0"}<|action_sep|>        t += v\n' in text
  assert '<|line_sep|>{"t": "..", "v": ".."}<|action_sep|>    for v in gen(2):\n' in text


def test_dots_only_against_a_baseline(traced):
  """In every trace: ".." never in a call frame, nor in a line frame whose last
  non-exception predecessor is a return frame."""
  checked = 0
  for result in traced[0].values():
    if not result.ok:
      continue
    last = None  # event of the last call/line/return frame
    for frame, pieces in zip(result.trace.frames, frame_pieces(result.trace.frames)):
      if frame.event == "call" or (frame.event == "line" and last == "return"):
        assert '".."' not in pieces[1][1]
        checked += 1
      if frame.event != "exception":
        last = frame.event
  assert checked > 20


def test_comprehensions_and_lambdas_are_frames_with_their_callees(traced):
  result = traced[0]["comprehensions"]
  assert result.ok
  calls = [f.source_line.strip() for f in result.trace.frames if isinstance(f, CallFrame)]
  comp, gen = "a = [h(i) for i in range(3)]", "b = sum(h(x) for x in a)"
  dictcomp, lam = "c = {k: h(k) for k in (7,)}", "k = (lambda y: h(y))(5)"
  assert calls == (["def main():", comp] + ["def h(n):"] * 3 + [gen, "def h(n):"] * 3 + [gen] +
                   [dictcomp, "def h(n):", lam, "def h(n):"])
  last_line = [f for f in result.trace.frames if isinstance(f, LineFrame)][-1]
  assert last_line.source_line == "    return a, b, c, k, log\n"
  assert last_line.locals == {"a": "[1, 2, 3]", "b": "9", "c": "{7: 8}", "k": "6"}
  assert result.trace.return_value == "([1, 2, 3], 9, {7: 8}, 6, [0, 1, 2, 1, 2, 3, 7, 5])"


def test_generator_functions_are_traced(traced):
  frames = traced[0]["generator"].trace.frames
  calls = [f for f in frames if isinstance(f, CallFrame)]
  assert [f.source_line for f in calls] == ["def main():\n", "def gen(n):\n"] + [
      "        yield i * 2\n"] * 2  # each resume is a call event
  yields = [f.value for f in frames if isinstance(f, ReturnFrame)]
  assert yields == ["0", "2", "None", "2"]


def test_recursion(traced):
  frames = traced[0]["recursion"].trace.frames
  assert [f.locals["n"] for f in frames if isinstance(f, CallFrame) and "n" in f.locals] == [
      "3", "2", "1"]
  assert [f.value for f in frames if isinstance(f, ReturnFrame)] == ["1", "2", "6", "6"]


def test_object_reprs_have_no_addresses(traced):
  result = traced[0]["objects"]
  assert result.ok
  text = format_trace(result.trace)
  assert '"self": "<__main__.Foo object>"' in text and " at 0x" not in text
  assert result.trace.return_value == (
      "[<__main__.Foo object>, Bar(2), <bound method Foo.__init__ of <__main__.Foo object>>]")
  # Bar.__repr__ fails inside __init__ (self.v unset): object.__repr__ is used, counted.
  assert '"self": "<__main__.Bar object>"' in text
  assert result.repr_fallbacks == 2


def test_unicode_values_are_ascii_escaped_and_source_lines_kept(traced):
  result = traced[0]["unicode"]
  text = format_trace(result.trace)
  assert '{"s": "\'\\u00e9\\u2603\'"}' in text
  assert "    s = 'é☃'  # ünïcode in the source stays as is\n" in text
  assert result.trace.return_value == "'é☃🙂'"
  assert result.num_bytes == len(text.encode())


def test_hash_seed_is_zero_like_a_plain_run(traced):
  code = "print(repr({'apple', 'banana', 'cherry', 'date', 'elder', 'fig'}))"
  plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONHASHSEED": "0"}, check=True).stdout.strip()
  assert traced[0]["hash_seed"].trace.return_value == plain


def test_stdin_and_stdout(traced):
  result = traced[0]["stdio"]
  assert result.ok and result.stdout == "42\n" and result.trace.return_value == "21"
  assert traced[0]["open0"].trace.return_value == "['21']"  # stdin is on fd 0 too


def test_requests_are_isolated_and_the_tracer_keeps_its_builtins(traced):
  assert traced[0]["patch_builtins"].trace.return_value == "42"
  assert traced[0]["after_patch"].trace.return_value == "0"


def test_nothing_after_the_entry_returns(traced):
  result = traced[0]["del_after_return"]
  assert result.stdout == "bye\n"  # D.__del__ ran after main's frame returned: not traced
  assert isinstance(result.trace.frames[-1], ReturnFrame)
  assert result.trace.frames[-1].source_line == "    return 1\n"


@pytest.mark.parametrize("name,status,kind", [
    ("many_events", "too_long", "max_events"),
    ("many_bytes", "too_long", "max_bytes"),
    ("swallow_abort", "too_long", "max_events"),
    ("untraced_loop", "timeout", "timeout"),
    ("loop_in_builtin", "timeout", "timeout"),
    ("memory", "memory", "memory"),
    ("syntax", "error", "syntax_error"),
    ("no_marker", "error", "no_entry"),
    ("generator_entry", "error", "no_entry"),
    ("module_raises", "error", "context_error"),
    ("needs_args", "error", "entry_error"),
    ("repr_dots", "error", "repr_is_dots"),
    ("infinite_recursion", "error", "recursion_limit"),
    ("settrace_off", "error", "incomplete"),
])
def test_dropped_programs_are_counted(traced, name, status, kind):
  result = traced[0][name]
  assert (result.status, result.kind) == (status, kind), result.reason
  assert result.trace is None and result.reason


def test_stats_count_every_outcome(traced):
  stats = traced[1]
  assert stats.total == len(CONTEXTS)
  assert stats.statuses["too_long"] == 3 and stats.statuses["timeout"] == 2
  assert stats.statuses["memory"] == 1 and stats.statuses["error"] == 8
  assert stats.statuses["ok"] == len(CONTEXTS) - 14
  assert stats.kinds["too_long/max_events"] == 2 and stats.raised == 2  # uncaught, exit
  assert "timeout/timeout: 2" in stats.summary()
  assert json.loads(json.dumps(stats.to_dict()))["ok"] == stats.statuses["ok"]


def test_exit_is_a_complete_trace(traced):
  result = traced[0]["exit"]
  assert result.ok and result.exception == "SystemExit(3)"


def test_event_limit_is_exact():
  # main: call + 2 lines + return = 4 events.
  context = M + "    x = 1\n    return x\n"
  assert trace_context(context, limits=TraceLimits(max_events=4), executor=EXEC).ok
  dropped = trace_context(context, limits=TraceLimits(max_events=3), executor=EXEC)
  assert (dropped.status, dropped.kind) == ("too_long", "max_events")
  size = trace_context(context, executor=EXEC).num_bytes
  assert trace_context(context, limits=TraceLimits(max_bytes=size), executor=EXEC).ok
  assert trace_context(context, limits=TraceLimits(max_bytes=size - 1), executor=EXEC).kind == (
      "max_bytes")


def test_in_process_mode_without_fork():
  request = {"items": [{"context": M + "    return 2\n"},
                       {"context": M + "    while True:\n        pass\n"},
                       {"context": "while True: pass\n" + M + "    return 1\n"}],
             "max_events": 10_000, "max_bytes": 10**6, "timeout_s": 1, "memory_mb": 512,
             "inline": True}
  out = EXEC(tracer_source(), stdin=json.dumps(request), timeout_s=30, memory_mb=0)
  results = [json.loads(line) for line in out.stdout.splitlines()]
  assert [(r["status"], r["kind"]) for r in results] == [
      ("ok", ""), ("too_long", "max_events"), ("timeout", "timeout")]
  assert results[0]["frames"] == [["call", 1, "{}"], ["line", 2, "{}"], ["return", 2, '"2"']]


def test_hash_seed_missing_reexecutes():
  request = {"items": [{"context": M + "    return {'apple', 'banana', 'cherry'}\n"}],
             "max_events": 100, "max_bytes": 10**5, "timeout_s": 5, "memory_mb": 512}
  outs = [subprocess.run([sys.executable, "-c", tracer_source()], input=json.dumps(request),
                         capture_output=True, text=True, env={"PYTHONHASHSEED": seed},
                         check=True).stdout for seed in ("0", "123")]
  assert outs[0] == outs[1]


def test_output_budget_splits_a_batch_across_processes():
  calls = []

  def small_output_executor(program, *, stdin, timeout_s, memory_mb):
    calls.append(len(json.loads(stdin)["items"]))
    return EXEC(program, stdin=stdin, timeout_s=timeout_s, memory_mb=memory_mb)

  small_output_executor.output_limit_bytes = 3000
  requests = [TraceRequest(M + f"    x = {'1' * 400}\n    return x\n", id=str(i))
              for i in range(4)]
  requests.append(TraceRequest(M + "    x = '" + "y" * 5000 + "'\n    return x\n", id="big"))
  results = trace_requests(requests, executor=small_output_executor)
  assert [r.status for r in results[:4]] == ["ok"] * 4
  assert (results[4].status, results[4].kind) == ("error", "output_limit")
  assert len(calls) > 2 and calls[0] == 5


def test_a_broken_executor_is_reported_for_every_request():
  def broken(program, *, stdin, timeout_s, memory_mb):
    return executors.ExecOutput("", "Traceback ...\nOSError: no python here", 1)

  stats = TraceStats()
  results = trace_requests([TraceRequest(M + "    return 1\n", id=str(i)) for i in range(3)],
                           executor=broken, stats=stats)
  assert [(r.status, r.kind) for r in results] == [("error", "process_died")] * 3
  assert "no python here" in results[0].reason and stats.kinds["error/process_died"] == 3
