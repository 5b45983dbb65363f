"""Competitive programming: write a Python program (or function) that passes hidden tests.

    env = CodeEnv(tokenizer, CodeEnvConfig(max_attempts=1))   # or sandbox=my_pool
    episode = env.start(task)            # tasks.load_tasks(path, "code")
    result = episode.step(action_ids)    # the agent's turn, ending with its stop token
    env.reward_fn(result.outcome)        # +1 / -1

The prompt is CWM's reasoning mode (FORMATS.md): the released model's reasoning
system prompt, the problem as the user message with the answer instruction of
CWM's RL code environment, and the assistant turn prefilled with `<think>\\n`.

Format rule (TRAINING.md): exactly one `</think>` in the turn, then exactly one
fenced code block (```python or untagged) after it; otherwise the outcome is
`{"success": False, "format_ok": False, "reason": ...}` with reason one of
FORMAT_REASONS and the episode ends. With a good format the code runs on the
tests in order, one sandboxed check program per test (evals/execution.py) with
the task's time and memory limits (per test):
- stdin/stdout: the program reads the test input on fd 0 (`input()`,
  `sys.stdin.buffer`, `open(0)` all work) and its stdout is compared with the
  expected output line by line, each line stripped, as CP judges do;
- call-based: `fn_name(*args)` (or `Solution().fn_name(*args)`) must equal the
  expected output; lists and tuples compare alike, floats to 1e-9.
By default the run stops at the first failing test, as CP judges do
(`stop_at_first_failure`). Outcome: success, format_ok, reason (TEST_REASONS:
execution.py's reasons, "wrong_answer" for a wrong output, "syntax" when the
program does not compile), tests_passed / tests_run / tests_total, the first
failing test (input, expected, got or error) and the attempt number.

Multi-attempt (max_attempts > 1): after a well-formatted attempt that fails a
test, the episode goes on: the observation closes the turn and adds a user
message with the failing test (input, expected, got or error; each truncated)
and the next assistant header with the `<think>\\n` prefill. The last attempt
decides the reward. A format error ends the episode at any attempt.

A sandbox failure (not the program's fault) raises `EnvError(reason="sandbox_error")`.
Episodes of one env may step concurrently from threads: they share the env's
SandboxPool (started on first use when none is given), which is thread-safe.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cwm_jax.evals.code_extract import fenced_code
from cwm_jax.evals.execution import CheckResult, ExecutionConfig, run_checks
from cwm_jax.inference.chat import chat_prompt
from cwm_jax.rl.envs.base import (EnvError, RewardFn, StepResult, Task, continue_dialog,
                                  plus_minus_one, shorten, turn_text)
from cwm_jax.rl.envs.tasks import CodeProblem, parse_code
from cwm_jax.rl.envs.sandboxed import SandboxedEnv
from cwm_jax.sandbox import Executor, SandboxError
from cwm_jax.tokenizer.formats import THINK_END, split_reasoning

FORMAT_REASONS = ("bad_think", "no_code", "multiple_code", "unclosed_code", "not_python")
TEST_REASONS = ("passed", "wrong_answer", "syntax", "assertion", "exception", "timeout",
                "memory", "exit")

# The answer instruction of CWM's RL code environment (its "ours" LiveCodeBench prompt).
FORMAT_GUIDE = ("Your code should be enclosed in triple backticks like so: ```python YOUR CODE "
                "HERE ```. Use the backticks for your code only.")
RETRY_GUIDE = "Give it another try.\n"


@dataclasses.dataclass(frozen=True)
class CodeEnvConfig:
  """max_attempts: attempts per episode (1: single attempt; > 1: test feedback and retry).
  time_limit_s / memory_mb: per-test limits unless the task sets its own
    (6 s: LiveCodeBench's per-test timeout; 2048 MB of address space, as evals use).
  stop_at_first_failure: stop running tests at the first failure (CP judges do;
    tests_passed then counts the tests run before it).
  feedback_chars: each of input / expected / got in the feedback message is cut to
    this many characters (middle elided with `[...]`).
  sandbox_workers: size of the SandboxPool the env starts when it is given none.
  """
  max_attempts: int = 1
  time_limit_s: float = 6.0
  memory_mb: int = 2048
  stop_at_first_failure: bool = True
  feedback_chars: int = 1000
  sandbox_workers: int = 4

  def __post_init__(self):
    for name in ("max_attempts", "memory_mb", "feedback_chars", "sandbox_workers"):
      value = getattr(self, name)
      if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"CodeEnvConfig.{name}={value!r}; expected a positive integer")
    if not self.time_limit_s > 0:
      raise ValueError(f"CodeEnvConfig.time_limit_s={self.time_limit_s!r}; expected > 0")


# ---------------------------------------------------------------- text: prompt, answer, feedback


def user_message(problem: CodeProblem) -> str:
  """The problem statement and the answer instruction, worded as CWM's RL code
  environment words them (the "." after the statement included)."""
  text = ("Provide a Python solution for the following competitive programming question: "
          f"{problem.prompt}.\n{FORMAT_GUIDE}")
  if problem.starter_code:
    return text + f" Use the provided function signature:\n```python\n{problem.starter_code}\n```"
  if problem.fn_name is not None:
    return text + (f" Your code should define a function `{problem.fn_name}`; it is called with "
                   "each test's arguments and its return value is checked.")
  return text + " Your code should read from and write to standard io."


def answer_code(text: str) -> tuple[str | None, str, str]:
  """(code, reason, detail) of an agent turn under the format rule; code is None
  when the format is wrong, and reason (one of FORMAT_REASONS) says why."""
  _, answer = split_reasoning(text)
  if answer is None:
    return None, "bad_think", f"expected exactly one {THINK_END}, found {text.count(THINK_END)}"
  fences = answer.count("```")
  if fences == 0:
    return None, "no_code", "no fenced code block after </think>"
  if fences == 1:
    return None, "unclosed_code", "the code block after </think> is not closed"
  if fences > 2:
    return None, "multiple_code", f"expected one code block after </think>, found {fences} ```"
  code = fenced_code(answer)
  if code is None:
    return None, "not_python", "the code block is not a ```python (or untagged) block"
  return code, "", ""


# ---------------------------------------------------------------- check programs

_WRONG = "__cwm_wrong_answer__"  # marks our own output check in an assertion message

_PRELUDE = r'''
import json, math, os, sys, threading, types

_WRONG = "__cwm_wrong_answer__"


def _wrong(got, n):
  # The harness keeps the last 2000 characters of the message: fit the output in them.
  while True:
    short = got if len(got) <= n else got[:n // 2] + "\n[...]\n" + got[len(got) - n // 2:]
    message = _WRONG + json.dumps(short)
    if len(message) <= 1500 or n < 16:
      return AssertionError(message)
    n //= 2


def _run(namespace):
  try:
    exec(compile(_SOURCE, "solution.py", "exec"), namespace)
  except SystemExit as e:
    if e.code not in (None, 0):
      raise
  for thread in threading.enumerate():
    if thread is not threading.current_thread() and not thread.daemon:
      thread.join()
'''

_STDIN = r'''
with open("stdin.txt", "w", encoding="utf-8") as _f:
  _f.write(_INPUT)
for _fd, _name, _flags in ((0, "stdin.txt", os.O_RDONLY),
                           (1, "stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
  _new = os.open(_name, _flags, 0o600)
  os.dup2(_new, _fd)
  os.close(_new)
sys.stdin = open(0, encoding="utf-8", closefd=False)
sys.stdout = _stdout = open(1, "w", encoding="utf-8", closefd=False)
try:
  _run({"__name__": "__main__"})
finally:
  try:
    _stdout.flush()
  except (OSError, ValueError):
    pass
with open("stdout.txt", encoding="utf-8", errors="replace") as _f:
  _got = _f.read()


def _lines(text):
  return [line.strip() for line in text.strip().splitlines()]


if _lines(_got) != _lines(_EXPECTED):
  raise _wrong(_got, _GOT_CHARS)
'''

_CALL = r'''
def _same(got, want):
  if isinstance(want, bool) or isinstance(got, bool):
    return isinstance(got, bool) and isinstance(want, bool) and got == want
  if isinstance(want, (int, float)) and isinstance(got, (int, float)):
    if isinstance(want, float) or isinstance(got, float):
      return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    return got == want
  if isinstance(want, list):
    return (isinstance(got, (list, tuple)) and len(got) == len(want)
            and all(_same(g, w) for g, w in zip(got, want)))
  if isinstance(want, dict):
    return (isinstance(got, dict) and got.keys() == want.keys()
            and all(_same(got[k], want[k]) for k in want))
  return type(got) is type(want) and got == want


_module = types.ModuleType("solution")
sys.modules["solution"] = _module
_run(_module.__dict__)
_fn = _module.__dict__.get(_FN_NAME)
if not callable(_fn) and isinstance(_module.__dict__.get("Solution"), type):
  _fn = getattr(_module.Solution(), _FN_NAME, None)
if not callable(_fn):
  raise NameError(f"the solution defines no function {_FN_NAME!r} (nor Solution.{_FN_NAME})")
_got = _fn(*json.loads(_ARGS))
if not _same(_got, json.loads(_EXPECTED)):
  raise _wrong(repr(_got), _GOT_CHARS)
'''


def check_program(code: str, problem: CodeProblem, test: Mapping[str, Any],
                  got_chars: int) -> str:
  """The check program of one test: runs `code` on it and fails unless the output is right.

  A wrong output raises an AssertionError whose message is the marker and the
  output (JSON, cut to `got_chars`), which `verdict` reads back.
  """
  header = f"_SOURCE = {code!r}\n_GOT_CHARS = {got_chars!r}\n"
  if problem.fn_name is None:
    return (header + f"_INPUT = {test['input']!r}\n_EXPECTED = {test['output']!r}\n"
            + _PRELUDE + _STDIN)
  return (header + f"_FN_NAME = {problem.fn_name!r}\n_ARGS = {json.dumps(test['args'])!r}\n"
          f"_EXPECTED = {json.dumps(test['output'])!r}\n" + _PRELUDE + _CALL)


_SYNTAX_ERRORS = ("SyntaxError", "IndentationError", "TabError")


def verdict(check: CheckResult) -> tuple[str, str]:
  """(reason, detail) of one test from its check program's result: reason is one of
  TEST_REASONS; detail is the wrong output (wrong_answer) or the error text."""
  if check.reason == "assertion" and _WRONG in check.detail:
    got = check.detail[check.detail.rindex(_WRONG) + len(_WRONG):].strip()
    try:
      return "wrong_answer", str(json.loads(got))
    except json.JSONDecodeError:
      return "wrong_answer", got
  if check.reason == "exception" and check.detail.startswith(_SYNTAX_ERRORS):
    return "syntax", check.detail
  if check.reason == "assertion":  # the program's own assert: its last line says the most
    return "assertion", check.detail.strip().splitlines()[-1] if check.detail.strip() else ""
  return check.reason, check.detail


@dataclasses.dataclass(frozen=True)
class AttemptReport:
  """The tests of one attempt: `reason` is "passed" or the first failure's reason."""
  passed: bool
  reason: str
  tests_passed: int
  tests_run: int
  tests_total: int
  first_failure: dict | None = None


def run_tests(executor: Executor, code: str, problem: CodeProblem, config: CodeEnvConfig
              ) -> AttemptReport:
  """Runs `code` on the problem's tests, in order, in the sandbox; raises EnvError
  (reason "sandbox_error") when the sandbox itself fails."""
  limits = ExecutionConfig(timeout_s=problem.time_limit_s or config.time_limit_s,
                           memory_mb=problem.memory_mb or config.memory_mb, workers=1)
  passed, run, first = 0, 0, None
  for index, test in enumerate(problem.tests):
    program = check_program(code, problem, test, config.feedback_chars)
    try:
      [check] = run_checks([program], limits, executor=executor)
    except SandboxError as e:
      raise EnvError(f"code env: the sandbox failed: {e}", reason="sandbox_error") from e
    if check.reason == "sandbox_error":
      raise EnvError(f"code env: the sandbox failed: {check.detail}", reason="sandbox_error")
    run += 1
    if check.passed:
      passed += 1
      continue
    if first is None:
      reason, detail = verdict(check)
      first = {"index": index, "reason": reason, "detail": shorten(detail, config.feedback_chars),
               "wall_s": check.wall_s, **_describe(problem, test, limits, config.feedback_chars)}
    if config.stop_at_first_failure:
      break
  total = len(problem.tests)
  return AttemptReport(passed == total, "passed" if first is None else first["reason"], passed,
                       run, total, first)


def _describe(problem: CodeProblem, test: Mapping[str, Any], limits: ExecutionConfig,
              chars: int) -> dict:
  """A failing test for the outcome and the feedback (texts cut to `chars`)."""
  if problem.fn_name is None:
    shown, expected = test["input"], test["output"]
  else:
    shown = f"{problem.fn_name}({', '.join(repr(a) for a in test['args'])})"
    expected = repr(test["output"])
  return {"input": shorten(shown, chars), "expected": shorten(expected, chars),
          "time_limit_s": limits.timeout_s, "memory_mb": limits.memory_mb}


def feedback_message(failure: dict, limit: int) -> str:
  """The user message after a failed attempt: the failing test and what went wrong."""

  def block(title: str, text: str) -> str:
    body = shorten(text, limit).rstrip("\n")
    return f"{title}:\n```\n{body}\n```\n"

  reason = failure["reason"]
  parts = ["Your code failed the following test:\n\n", block("Input", failure["input"]),
           block("Expected output", failure["expected"])]
  if reason == "wrong_answer":
    parts.append(block("Your output", failure["detail"]))
  elif reason == "timeout":
    parts.append(f"Error: time limit exceeded ({failure['time_limit_s']:g} s)\n")
  elif reason == "memory":
    parts.append(f"Error: memory limit exceeded ({failure['memory_mb']} MB)\n")
  else:
    parts.append(block("Error", failure["detail"] or reason))
  parts.append("\n" + RETRY_GUIDE + FORMAT_GUIDE)
  return "".join(parts)


# ---------------------------------------------------------------- env and episode


class CodeEnv(SandboxedEnv):
  """The competitive-programming environment (see the module docstring).

  The engine reads `stop_token_ids` and `stop_strings` (none: a turn ends at its
  stop token) and `reward_fn`. `sandbox` is any thread-safe executor (a
  SandboxPool); without one the env starts a pool on first use and `close()` stops it.
  """

  name = "code"

  def __init__(self, tokenizer, config: CodeEnvConfig = CodeEnvConfig(), *,
               sandbox: Executor | None = None, reward_fn: RewardFn = plus_minus_one):
    super().__init__(tokenizer, config, sandbox=sandbox, reward_fn=reward_fn)

  def prompt(self, problem: CodeProblem) -> list[int]:
    return chat_prompt(self.tokenizer, [{"role": "user", "content": user_message(problem)}],
                       reasoning=True)

  def start(self, task: Task) -> "CodeEpisode":
    try:
      problem = parse_code(task.data)
    except ValueError as e:
      raise ValueError(f"code env: task {task.id!r} is not a code task: {e}") from e
    return CodeEpisode(self, task, problem)


class CodeEpisode:
  """One task played by one agent: `prompt`, then `step` per attempt until done."""

  def __init__(self, env: CodeEnv, task: Task, problem: CodeProblem):
    self.env, self.task, self.problem = env, task, problem
    self.prompt: list[int] = env.prompt(problem)
    self.attempts = 0
    self.done = False

  def step(self, action: Sequence[int]) -> StepResult:
    if self.done:
      raise RuntimeError(f"code env: episode {self.task.id!r} is done; start a new one.")
    env, config = self.env, self.env.config
    self.attempts += 1
    code, reason, detail = answer_code(turn_text(env.tokenizer, action))
    if code is None:
      self.done = True
      return StepResult((), True, {"success": False, "format_ok": False, "reason": reason,
                                   "detail": detail, "attempt": self.attempts})
    report = run_tests(env.sandbox, code, self.problem, config)
    outcome = {"success": report.passed, "format_ok": True, "reason": report.reason,
               "tests_passed": report.tests_passed, "tests_run": report.tests_run,
               "tests_total": report.tests_total, "first_failure": report.first_failure,
               "attempt": self.attempts}
    if report.passed or self.attempts >= config.max_attempts:
      self.done = True
      return StepResult((), True, outcome)
    feedback = feedback_message(report.first_failure, config.feedback_chars)
    observation = continue_dialog(env.tokenizer, action,
                                  [{"role": "user", "content": feedback}], reasoning=True)
    return StepResult(observation, False, outcome)
