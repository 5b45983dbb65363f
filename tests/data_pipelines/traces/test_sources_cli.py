"""Program sources (CruxEval, competitive programming) and the command line."""

import os
import subprocess
import sys

import pytest

from data_pipelines.traces import executors
from data_pipelines.traces.frames import CallFrame
from data_pipelines.traces.sources import (competitive_context, competitive_request,
                                           cruxeval_context, cruxeval_requests)
from data_pipelines.traces.trace import trace_requests

EXEC = executors.unsandboxed_subprocess_executor
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))


def test_cruxeval_context_is_exactly_the_formats_md_string():
  assert cruxeval_context("def f(a):\n    return a", "1, 2") == (
      "\ndef f(a):\n    return a\ndef main():  # << START_OF_TRACE\n    return f(1, 2)\n")
  requests = cruxeval_requests([{"id": "sample_9", "code": "def f(x): return x", "input": "3"}])
  assert requests[0].id == "sample_9" and requests[0].stdin == ""
  with pytest.raises(ValueError, match="record 0 .*needs str fields 'code' and 'input'"):
    cruxeval_requests([{"code": "def f(): pass"}])


GUARDED = """import sys

def solve():
    n = int(input())
    print(n * 2)

if __name__ == "__main__":
    solve()
"""
CALLED = "def main() :\n    print(sum(map(int, input().split())))\n\nmain()\n"
FLAT = "n = int(input())\nfor i in range(n):\n    print(i)\n"
LOOPED = "def solve():\n    print(input())\n\nfor _ in range(int(input())):\n    solve()\n"


def test_competitive_contexts():
  assert competitive_context(GUARDED) == GUARDED.replace(
      "def solve():", "def solve():  # << START_OF_TRACE").replace("    solve()", "    pass")
  assert competitive_context(CALLED) == (
      "def main() :  # << START_OF_TRACE\n    print(sum(map(int, input().split())))\n")
  assert competitive_context(FLAT) == (
      "def main():  # << START_OF_TRACE\n    n = int(input())\n    for i in range(n):\n"
      "        print(i)\n")
  assert competitive_context(LOOPED).startswith("def main():  # << START_OF_TRACE\n"
                                                "    def solve():\n")
  with pytest.raises(ValueError, match="multi-line string"):
    competitive_context('s = """a\nb"""\nprint(s)\n')
  with pytest.raises(ValueError, match="does not parse"):
    competitive_context("def (:\n")


def test_competitive_programs_trace_with_their_stdin():
  requests = [competitive_request(GUARDED, "21\n", "guarded"),
              competitive_request(CALLED, "1 2 3\n", "called"),
              competitive_request(FLAT, "2\n", "flat"),
              competitive_request(LOOPED, "2\nab\ncd\n", "looped")]
  results = trace_requests(requests, executor=EXEC)
  assert [r.status for r in results] == ["ok"] * 4, [r.reason for r in results]
  assert [r.stdout for r in results] == ["42\n", "6\n", "0\n1\n", "ab\ncd\n"]
  assert results[0].trace.frames[0] == CallFrame({}, "def solve():\n")
  assert sum(isinstance(f, CallFrame) for f in results[3].trace.frames) == 3


def test_cli_prints_the_trace(tmp_path):
  context = "def main():  # << START_OF_TRACE\n    x = 'é'\n    return x\n"
  path = tmp_path / "context.py"
  path.write_text(context, encoding="utf-8")
  command = [sys.executable, "-m", "data_pipelines.traces.trace", str(path), "--unsandboxed"]
  out = subprocess.run(command, capture_output=True, cwd=REPO, check=True)
  expected = ("<|begin_of_text|><|trace_context_start|>" + context + "<|frame_sep|>"
              "<|call_sep|>{}<|action_sep|>def main():\n<|frame_sep|>"
              "<|line_sep|>{}<|action_sep|>    x = 'é'\n<|frame_sep|>"
              "<|line_sep|>{\"x\": \"'\\u00e9'\"}<|action_sep|>    return x\n<|frame_sep|>"
              "<|return_sep|><|action_sep|>    return x\n<|arg_sep|>\"'\\u00e9'\"<|frame_sep|>"
              "<|end_of_text|>")
  assert out.stdout.decode("utf-8") == expected
  readable = subprocess.run(command + ["--readable"], capture_output=True, cwd=REPO, check=True)
  assert readable.stdout.decode().endswith("<|frame_sep|>\n<|end_of_text|>\n")

  solution = tmp_path / "sol.py"
  solution.write_text(GUARDED)
  (tmp_path / "in.txt").write_text("5\n")
  out = subprocess.run([sys.executable, "-m", "data_pipelines.traces.trace", str(solution),
                        "--competitive", "--stdin", str(tmp_path / "in.txt"), "--unsandboxed"],
                       capture_output=True, text=True, cwd=REPO, check=True)
  assert '{"n": "5"}<|action_sep|>    print(n * 2)\n' in out.stdout


def test_cli_reports_dropped_programs_and_missing_sandbox(tmp_path):
  path = tmp_path / "loop.py"
  path.write_text("def main():  # << START_OF_TRACE\n    while True:\n        pass\n")
  out = subprocess.run([sys.executable, "-m", "data_pipelines.traces.trace", str(path),
                        "--unsandboxed", "--max_events", "50"],
                       capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 1 and "dropped (too_long/max_events)" in out.stderr
  if not executors.sandbox_available():
    out = subprocess.run([sys.executable, "-m", "data_pipelines.traces.trace", str(path)],
                         capture_output=True, text=True, cwd=REPO,
                         env={k: v for k, v in os.environ.items()
                              if k != executors.UNSANDBOXED_ENV})
    assert out.returncode == 2 and "--unsandboxed" in out.stderr
