"""The math env with scripted agents: equivalent boxed answers succeed, wrong ones and
format violations fail; the python tool variant runs calls in the sandbox and answers
with `tool: python` messages, at most 4 per episode."""

import time

import pytest

from cwm_jax.rl.envs.base import EnvError, Task, plus_minus_one
from cwm_jax.rl.envs.math_env import MathEnv, MathEnvConfig, boxed_answer, tool_environment
from cwm_jax.tokenizer.formats import THINK_START, format_dialog, system_prompt

HALF = Task("half", "math", {"id": "half", "problem": "What is 1 divided by 2?", "answer": "0.5"})
TOOL = MathEnvConfig(python_tool=True, tool_timeout_s=0.5)
HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"


def call(code: str, thinking: str = "Let me compute it.\n") -> str:
  """A turn that calls the python tool, as generated up to the `</tool>` stop string."""
  return f"{thinking}<tool: python>\n{code}\n</tool>"


def test_prompts_are_the_reasoning_chat_format(tokenizer):
  plain, tool = MathEnv(tokenizer), MathEnv(tokenizer, TOOL)
  user = {"role": "user", "content": HALF.data["problem"] + "\n\nPut your final answer within "
                                                            "\\boxed{}."}
  for env, environment in ((plain, None), (tool, tool_environment(TOOL))):
    text = tokenizer.decode(env.start(HALF).prompt)
    system = {"role": "system", "content": system_prompt(reasoning=True, environment=environment)}
    assert text == format_dialog([system, user], add_generation_prompt=True, reasoning=True)
    assert text.endswith(HEADER + THINK_START)
  assert "# Environment" in tokenizer.decode(tool.start(HALF).prompt)
  assert "<tool: python>\nCODE\n</tool>" in tool_environment(TOOL)
  assert (plain.name, plain.stop_strings, tool.name, tool.stop_strings) == (
      "math", (), "math_python", ("</tool>",))
  assert plain.stop_token_ids == tool.stop_token_ids == tokenizer.stop_ids
  assert plain.reward_fn is plus_minus_one


@pytest.mark.parametrize("boxed, reference, success", [
    (r"\frac{1}{2}", "0.5", True),
    ("0.5", r"\frac{1}{2}", True),
    (r"\dfrac12", r"\frac{1}{2}", True),
    ("0.25", "0.5", False),
    ("3", "4", False),
])
def test_the_boxed_answer_is_checked_for_equivalence(tokenizer, turn, boxed, reference, success):
  task = Task("t", "math", {"id": "t", "problem": "p", "answer": reference})
  result = MathEnv(tokenizer).start(task).step(
      turn(f"Half of one.\n</think>\nThe answer is $\\boxed{{{boxed}}}$."))
  assert result.done and result.observation == ()
  assert result.outcome["success"] is success and result.outcome["format_ok"] is True
  assert result.outcome["prediction"] == boxed
  assert result.outcome["reason"] == ("correct" if success else "wrong")
  assert plus_minus_one(result.outcome) == (1.0 if success else -1.0)


@pytest.mark.parametrize("text, reason", [
    ("a</think>b</think>\\boxed{0.5}", "bad_think"),
    ("no end of thinking \\boxed{0.5}", "bad_think"),
    ("</think>\nthe answer is 0.5", "no_boxed"),
    ("</think>\n\\boxed{0.5", "no_boxed"),
    ("</think>\n\\boxed{0.5} or \\boxed{1/2}", "multiple_boxed"),
    ("maybe \\boxed{3}</think>\nso 0.5", "no_boxed"),  # a box in the reasoning does not count
])
def test_a_format_violation_fails(tokenizer, turn, text, reason):
  result = MathEnv(tokenizer).start(HALF).step(turn(text))
  assert result.done and result.observation == ()
  assert result.outcome["format_ok"] is False and result.outcome["success"] is False
  assert result.outcome["reason"] == reason and boxed_answer(text)[1] == reason


def test_a_tool_call_while_reasoning_gets_the_output_then_the_answer_counts(tokenizer, turn,
                                                                            pool):
  env = MathEnv(tokenizer, TOOL, sandbox=pool)
  episode = env.start(HALF)
  first = call("import sys\nprint(1 / 2)\nprint('note', file=sys.stderr)")
  result = episode.step(turn(first, stop=False))
  body = "completed. [stdout]0.5\n[/stdout] [stderr]note\n[/stderr]"
  assert not result.done and result.outcome == {"tool_calls": 1}
  # the observation closes the turn, adds the tool message and a bare assistant header:
  # the model was mid-reasoning and goes on reasoning
  assert tokenizer.decode(result.observation) == (
      "<|eot_id|><|start_header_id|>tool: python<|end_header_id|>\n\n" + body + "<|eot_id|>"
      + HEADER)
  dialog = [{"role": "system", "content": system_prompt(reasoning=True,
                                                        environment=tool_environment(TOOL))},
            {"role": "user", "content": HALF.data["problem"] + "\n\nPut your final answer "
                                                               "within \\boxed{}."},
            {"role": "assistant", "content": THINK_START + first},
            {"role": "tool", "name": "python", "content": body}]
  assert tokenizer.decode(episode.prompt + turn(first, stop=False) + list(result.observation)) \
      == format_dialog(dialog, add_generation_prompt=True)

  final = episode.step(turn("So it is 0.5.\n</think>\n$\\boxed{\\frac{1}{2}}$"))
  assert final.done and final.observation == ()
  assert final.outcome["success"] is True and final.outcome["tool_calls"] == 1


def test_tool_errors_timeouts_and_the_call_limit(tokenizer, turn, pool):
  env = MathEnv(tokenizer, TOOL, sandbox=pool)
  episode = env.start(HALF)

  def step(text):
    result = episode.step(turn(text, stop=False))
    return result, tokenizer.decode(result.observation)

  # a call after </think>: the next turn opens its thinking again
  result, text = step(call("print(1 / 0)", thinking="Check.\n</think>\n"))
  assert text.endswith("<|eot_id|>" + HEADER + THINK_START)
  assert "tool: python<|end_header_id|>\n\nerror: Traceback (most recent call last):\n" \
         '  File "<source>", line 1, in <module>' in text
  assert "ZeroDivisionError: division by zero" in text and "main.py" not in text

  start = time.monotonic()
  result, text = step(call("while True:\n    pass"))
  assert "\n\nerror: Timeout<|eot_id|>" in text and time.monotonic() - start < 3

  result, text = step(call("def f(:"))
  assert "error:   File \"<source>\", line 1" in text and "SyntaxError" in text

  result, text = step("Try bash.\n<tool: bash>\nls\n</tool>")
  assert "<|start_header_id|>tool: bash<|end_header_id|>\n\nerror: No such tool<|eot_id|>" in text
  assert not result.done and result.outcome == {"tool_calls": 4}

  result = episode.step(turn(call("print(0.5)"), stop=False))  # the 5th call
  assert result.done and result.observation == ()
  assert result.outcome["reason"] == "tool_limit" and result.outcome["format_ok"] is False
  assert env.reward_fn(result.outcome) == -1.0


def test_a_final_answer_wins_over_a_tool_call_and_bad_calls_fail(tokenizer, turn, broken_sandbox):
  env = MathEnv(tokenizer, TOOL, sandbox=broken_sandbox)  # nothing may run here
  result = env.start(HALF).step(turn("</think>\n\\boxed{0.5}\n<tool: python>\nprint(1)\n</tool>"))
  assert result.done and result.outcome["success"] is True
  result = env.start(HALF).step(turn("Let me run <tool: python> print(1) </tool>", stop=False))
  assert result.done and result.outcome["reason"] == "bad_tool_call"
  # without the tool variant a tool call is just text of a turn without an answer
  result = MathEnv(tokenizer).start(HALF).step(turn(call("print(1)"), stop=False))
  assert result.done and result.outcome["reason"] == "bad_think"


def test_a_sandbox_failure_raises_env_error(tokenizer, turn, broken_sandbox):
  env = MathEnv(tokenizer, TOOL, sandbox=broken_sandbox)
  with pytest.raises(EnvError) as e:
    env.start(HALF).step(turn(call("print(1)"), stop=False))
  assert e.value.reason == "sandbox_error"


def test_a_task_that_is_not_a_math_task_is_refused(tokenizer):
  with pytest.raises(ValueError, match="not a math task"):
    MathEnv(tokenizer).start(Task("c", "code", {"id": "c", "prompt": "p", "tests": []}))
