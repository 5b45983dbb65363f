"""Math: reason, then give one boxed answer; optionally with a python tool.

    env = MathEnv(tokenizer, MathEnvConfig(python_tool=True))
    episode = env.start(task)            # tasks.load_tasks(path, "math")
    result = episode.step(action_ids)    # generation stops at env.stop_token_ids / stop_strings

The prompt is CWM's reasoning mode (FORMATS.md): the reasoning system prompt, the
problem with the project's MATH instruction (`math500.USER_SUFFIX`), the assistant
turn prefilled with `<think>\\n`.

Format rule (TRAINING.md): the final turn has exactly one `</think>` and exactly
one `\\boxed{...}` after it; otherwise the outcome is `{"success": False,
"format_ok": False, "reason": ...}` (FORMAT_REASONS). The boxed answer is compared
with the reference by `math500.equivalent` (text, then math-verify, then sympy);
outcome: success, format_ok, reason ("correct", "wrong", or "unparsed" when
neither parser could read it), prediction, decided_by, tool_calls.

Python tool variant (`python_tool=True`, env name "math_python"): the system prompt
describes a `python` tool under `# Environment`. A turn that calls it (FORMATS.md:
`<tool: python>\\nCODE\\n</tool>`) and gives no final answer (no `\\boxed` after a
single `</think>`) gets the result of running CODE in the sandbox (a fresh process,
10 s by default) as a `tool: python` message, whose body is `completed.` then
` [stdout]...[/stdout]` and ` [stderr]...[/stderr]` when not empty, or `error:
Timeout`, or `error: <traceback>` (as the released system writes them; a call to
another tool name gets `error: No such tool`; every call counts toward the limit
below; a `<tool:` that does not parse ends the episode with reason "bad_tool_call").
The generation stops at `</tool>` (`stop_strings`), so the observation first closes
the turn with `<|eot_id|>`. The next assistant turn is prefilled with `<think>\\n`
only when the calling turn had already closed its thinking (a call after `</think>`,
as chat.py's dialogs do); a call made while reasoning (as CWM's math environment
invites: "You may invoke tools during reasoning") is followed by a bare assistant
header, so the model goes on reasoning and closes it with the one `</think>` of
its final turn. At most `max_tool_calls` (4) calls per episode: a turn whose calls
would go past it ends the episode with `format_ok` False, reason "tool_limit"
(reward -1). (The released system answered a fifth call with an error message
instead; a hard stop keeps episodes bounded.) A sandbox failure raises
`EnvError(reason="sandbox_error")`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from cwm_jax.evals.math500 import USER_SUFFIX, equivalent, last_boxed
from cwm_jax.inference.chat import chat_prompt, tool_message
from cwm_jax.rl.envs.base import (EnvError, RewardFn, StepResult, Task, continue_dialog,
                                  plus_minus_one, shorten, turn_text)
from cwm_jax.rl.envs.tasks import MathProblem, parse_math
from cwm_jax.rl.envs.sandboxed import SandboxedEnv
from cwm_jax.sandbox import Executor, SandboxError
from cwm_jax.tokenizer.formats import THINK_END, parse_tool_calls, split_reasoning

FORMAT_REASONS = ("bad_think", "no_boxed", "multiple_boxed", "bad_tool_call", "tool_limit")
PYTHON_TOOL = "python"
TOOL_STOP = "</tool>"
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


@dataclasses.dataclass(frozen=True)
class MathEnvConfig:
  """python_tool: offer the python tool (env name "math_python", stop string `</tool>`).
  max_tool_calls: tool calls per episode (TRAINING.md: 4); one more ends the episode.
  tool_timeout_s / tool_memory_mb: limits of one tool run (TRAINING.md: 10 s).
  tool_output_chars: stdout, stderr and tracebacks in a tool result are cut to this
    many characters (middle elided with `[...]`).
  sandbox_workers: size of the SandboxPool the env starts when it is given none.
  """
  python_tool: bool = False
  max_tool_calls: int = 4
  tool_timeout_s: float = 10.0
  tool_memory_mb: int = 2048
  tool_output_chars: int = 4000
  sandbox_workers: int = 4

  def __post_init__(self):
    for name in ("max_tool_calls", "tool_memory_mb", "tool_output_chars", "sandbox_workers"):
      value = getattr(self, name)
      if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"MathEnvConfig.{name}={value!r}; expected a positive integer")
    if not self.tool_timeout_s > 0:
      raise ValueError(f"MathEnvConfig.tool_timeout_s={self.tool_timeout_s!r}; expected > 0")


def tool_environment(config: MathEnvConfig) -> str:
  """The `# Environment` section of the system prompt of the python tool variant."""
  return ("You may invoke tools during reasoning.\n\n"
          "The following tools are available:\n\n"
          f"- python: Run Python code in an isolated sandbox up to {config.max_tool_calls} "
          "times.\n\n"
          "Call a tool with\n<tool: python>\nCODE\n</tool>\n"
          "Each call runs CODE as a fresh program (time limit "
          f"{config.tool_timeout_s:g} s); the result comes back in a `tool: python` message: "
          "`completed.` with the program's [stdout]...[/stdout] and [stderr]...[/stderr], or "
          "`error: ...`.")


def boxed_answer(text: str) -> tuple[str | None, str, str]:
  """(prediction, reason, detail) of a final turn under the format rule; prediction
  is None when the format is wrong, and reason (FORMAT_REASONS) says why."""
  _, answer = split_reasoning(text)
  if answer is None:
    return None, "bad_think", f"expected exactly one {THINK_END}, found {text.count(THINK_END)}"
  n_boxed = len(_BOX_RE.findall(answer))
  if n_boxed > 1:
    return None, "multiple_boxed", f"expected one \\boxed{{}} after </think>, found {n_boxed}"
  prediction = last_boxed(answer) if n_boxed else None
  if prediction is None:
    return None, "no_boxed", "no (closed) \\boxed{} after </think>"
  return prediction, "", ""


def _has_final_answer(text: str) -> bool:
  _, answer = split_reasoning(text)
  return answer is not None and _BOX_RE.search(answer) is not None


# ---------------------------------------------------------------- the python tool

TOOL_FILE = "tool_input.py"
_TOOL_HARNESS = r'''
import json, linecache, sys, traceback


def _report(payload):
  with open(3, "w") as f:
    json.dump(payload, f)


def _error(e, tb):
  return "".join(traceback.format_exception(type(e), e, tb))


with open("tool_input.py", encoding="utf-8") as f:
  _source = f.read()
linecache.cache["<source>"] = (len(_source), None, _source.splitlines(True), "<source>")
try:
  _code = compile(_source, "<source>", "exec")
except BaseException as e:  # SyntaxError, ValueError (NUL bytes), RecursionError
  _report({"error": _error(e, None)})  # where in CODE, without the harness's frames
else:
  try:
    exec(_code, {"__name__": "__main__"})
  except SystemExit:
    _report({"status": "completed"})
  except BaseException as e:
    _report({"error": _error(e, e.__traceback__.tb_next)})  # from CODE's own frame on
  else:
    _report({"status": "completed"})
'''


def run_python_tool(executor: Executor, code: str, config: MathEnvConfig) -> str:
  """The `tool: python` message body for running `code` (FORMATS.md python tool result)."""
  limit = config.tool_output_chars
  try:
    result = executor.run_python_json(_TOOL_HARNESS, files={TOOL_FILE: code},
                                      timeout_s=config.tool_timeout_s,
                                      memory_mb=config.tool_memory_mb)
  except SandboxError as e:
    raise EnvError(f"math env: the sandbox failed: {e}", reason="sandbox_error") from e
  if result.sandbox_error:
    raise EnvError(f"math env: the sandbox failed: {result.sandbox_error}",
                   reason="sandbox_error")
  if result.timed_out:
    return "error: Timeout"
  payload = result.payload if isinstance(result.payload, dict) else {}
  if isinstance(payload.get("error"), str):
    return "error: " + shorten(payload["error"], limit)
  if result.memory_exceeded:
    return "error: MemoryError"
  if payload.get("status") != "completed" or result.exit_code != 0:
    return f"error: the program ended without finishing (exit code {result.exit_code})"
  body = "completed."
  if result.stdout:
    body += f" [stdout]{shorten(result.stdout, limit)}[/stdout]"
  if result.stderr:
    body += f" [stderr]{shorten(result.stderr, limit)}[/stderr]"
  return body


# ---------------------------------------------------------------- env and episode


class MathEnv(SandboxedEnv):
  """The math environment, with or without the python tool (see the module docstring).

  The engine reads `stop_token_ids`, `stop_strings` (`("</tool>",)` with the tool:
  a turn that calls it ends there) and `reward_fn`. `sandbox` (a thread-safe
  executor such as a SandboxPool) runs tool calls; without one the tool variant
  starts a pool on first use and `close()` stops it.
  """

  def __init__(self, tokenizer, config: MathEnvConfig = MathEnvConfig(), *,
               sandbox: Executor | None = None, reward_fn: RewardFn = plus_minus_one):
    super().__init__(tokenizer, config, sandbox=sandbox, reward_fn=reward_fn,
                     stop_strings=(TOOL_STOP,) if config.python_tool else ())
    self.name = "math_python" if config.python_tool else "math"

  def prompt(self, problem: MathProblem) -> list[int]:
    environment = tool_environment(self.config) if self.config.python_tool else None
    return chat_prompt(self.tokenizer,
                       [{"role": "user", "content": problem.problem + USER_SUFFIX}],
                       reasoning=True, environment=environment)

  def start(self, task: Task) -> "MathEpisode":
    try:
      problem = parse_math(task.data)
    except ValueError as e:
      raise ValueError(f"math env: task {task.id!r} is not a math task: {e}") from e
    return MathEpisode(self, task, problem)


class MathEpisode:
  """One problem: `prompt`, then `step` per turn (tool calls) until the final answer."""

  def __init__(self, env: MathEnv, task: Task, problem: MathProblem):
    self.env, self.task, self.problem = env, task, problem
    self.prompt: list[int] = env.prompt(problem)
    self.tool_calls = 0
    self.done = False

  def _end(self, outcome: dict) -> StepResult:
    self.done = True
    return StepResult((), True, {**outcome, "tool_calls": self.tool_calls})

  def step(self, action: Sequence[int]) -> StepResult:
    if self.done:
      raise RuntimeError(f"math env: episode {self.task.id!r} is done; start a new one.")
    env, config = self.env, self.env.config
    text = turn_text(env.tokenizer, action)
    if config.python_tool and not _has_final_answer(text):
      calls = parse_tool_calls(text)
      if calls:
        return self._tool_turn(action, text, calls)
      if "<tool:" in text:
        return self._end({"success": False, "format_ok": False, "reason": "bad_tool_call",
                          "detail": "a <tool: ...> call that does not parse (expected "
                                    "<tool: python>\\nCODE\\n</tool>)"})
    prediction, reason, detail = boxed_answer(text)
    if prediction is None:
      return self._end({"success": False, "format_ok": False, "reason": reason,
                        "detail": detail})
    correct, how = equivalent(prediction, self.problem.answer)
    reason = "correct" if correct else ("unparsed" if how == "unparsed" else "wrong")
    return self._end({"success": correct, "format_ok": True, "reason": reason,
                      "prediction": prediction, "decided_by": how})

  def _tool_turn(self, action: Sequence[int], text: str, calls) -> StepResult:
    config = self.env.config
    if self.tool_calls + len(calls) > config.max_tool_calls:
      return self._end({"success": False, "format_ok": False, "reason": "tool_limit",
                        "detail": f"more than {config.max_tool_calls} tool calls"})
    messages = []
    for call in calls:
      body = (run_python_tool(self.env.sandbox, call.arguments, config)
              if call.name == PYTHON_TOOL else "error: No such tool")
      messages.append(tool_message(call.name, body))
      self.tool_calls += 1
    observation = continue_dialog(self.env.tokenizer, action, messages,
                                  reasoning=THINK_END in text)
    return StepResult(observation, False, {"tool_calls": self.tool_calls})
