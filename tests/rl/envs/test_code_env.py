"""The competitive-programming env with scripted agents: real solutions pass real tests
in the sandbox, wrong ones fail with the right reason, format violations end the
episode before anything runs, and a failed attempt continues the same dialog."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cwm_jax.rl.envs.base import EnvError, Task, plus_minus_one
from cwm_jax.rl.envs.code import CodeEnv, CodeEnvConfig, answer_code, user_message
from cwm_jax.rl.envs.tasks import parse_code
from cwm_jax.sandbox import SandboxError
from cwm_jax.tokenizer.formats import REASONING_PREAMBLE, THINK_START, format_dialog, system_prompt

SUM = Task("sum", "code", {
    "id": "sum", "prompt": "Read two integers a and b and print a + b.",
    "tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "40 2", "output": "42"},
              {"input": "-5 5\n", "output": "0  \n\n"}],
    "time_limit_s": 0.5})
ADD = Task("add", "code", {
    "id": "add", "prompt": "Return the sum (or the concatenation) of a and b.", "fn_name": "add",
    "tests": [{"args": [1, 2], "output": 3}, {"args": [[1], [2, 3]], "output": [1, 2, 3]},
              {"args": [0.1, 0.2], "output": 0.3}]})

READ_INPUT = "a, b = map(int, input().split())\nprint(a + b)"
READ_BUFFER = ("import sys\n\ndef main():\n    a, b = map(int, sys.stdin.buffer.read().split())\n"
               "    sys.stdout.write(f'{a + b}\\n')\n\nif __name__ == '__main__':\n    main()")
READ_FD0 = "import sys\nprint(sum(map(int, open(0).read().split())))\nsys.exit(0)"


def answer(code: str, fence: str = "```python") -> str:
  return f"Add the two numbers.\n</think>\nHere is my solution:\n{fence}\n{code}\n```"


@pytest.fixture(scope="module")
def env(tokenizer, pool):
  return CodeEnv(tokenizer, CodeEnvConfig(max_attempts=1), sandbox=pool)


def test_the_prompt_is_the_reasoning_chat_format(tokenizer, broken_sandbox):
  env = CodeEnv(tokenizer, sandbox=broken_sandbox)
  episode = env.start(SUM)
  text = tokenizer.decode(episode.prompt)
  user = user_message(parse_code(SUM.data))
  assert text == format_dialog([{"role": "system", "content": system_prompt(reasoning=True)},
                                {"role": "user", "content": user}],
                               add_generation_prompt=True, reasoning=True)
  assert REASONING_PREAMBLE in text and SUM.data["prompt"] in user and "```python" in user
  assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n" + THINK_START)
  assert "standard io" in user and "`add`" in user_message(parse_code(ADD.data))
  assert env.name == "code" and env.reward_fn is plus_minus_one and env.stop_strings == ()
  assert env.stop_token_ids == tokenizer.stop_ids


@pytest.mark.parametrize("text, reason", [
    (answer(READ_INPUT).replace("</think>", "</think></think>"), "bad_think"),
    (answer(READ_INPUT).replace("</think>", ""), "bad_think"),
    ("</think>\nprint(3)", "no_code"),
    (answer(READ_INPUT) + "\n```python\nprint(3)\n```", "multiple_code"),
    ("</think>\n```python\nprint(3)", "unclosed_code"),
    (answer("int main() {}", fence="```cpp"), "not_python"),
    # a code block inside the reasoning does not count
    ("```python\nprint(3)\n```\n</think>\nno code", "no_code"),
])
def test_a_format_violation_ends_the_episode_without_running(tokenizer, turn, broken_sandbox,
                                                             text, reason):
  env = CodeEnv(tokenizer, CodeEnvConfig(max_attempts=3), sandbox=broken_sandbox)
  result = env.start(SUM).step(turn(text))
  assert result.done and result.observation == ()
  assert result.outcome["format_ok"] is False and result.outcome["success"] is False
  assert result.outcome["reason"] == reason and env.reward_fn(result.outcome) == -1.0
  assert answer_code(text)[1] == reason


@pytest.mark.parametrize("code", [READ_INPUT, READ_BUFFER, READ_FD0])
def test_a_correct_stdin_program_passes_all_tests(env, turn, code):
  result = env.start(SUM).step(turn(answer(code)))
  assert result.done and result.observation == ()
  assert result.outcome == {"success": True, "format_ok": True, "reason": "passed",
                            "tests_passed": 3, "tests_run": 3, "tests_total": 3,
                            "first_failure": None, "attempt": 1}
  assert env.reward_fn(result.outcome) == 1.0


@pytest.mark.parametrize("code, reason, index, detail", [
    ("a, b = map(int, input().split())\nprint(a + b if a > 0 else 7)", "wrong_answer", 2, "7\n"),
    ("a, b = map(int, input().split())\nprint(a + b if a != 40 else a // 0)", "exception", 1,
     "ZeroDivisionError: integer division or modulo by zero"),
    ("print(", "syntax", 0, None),
    ("a, b = map(int, input().split())\nassert a < 10, 'too big'\nprint(a + b)", "assertion", 1,
     "AssertionError: too big"),
    ("while True:\n    pass", "timeout", 0, ""),
])
def test_a_failing_program_reports_the_first_failing_test(env, turn, code, reason, index, detail):
  start = time.monotonic()
  result = env.start(SUM).step(turn(answer(code)))
  outcome = result.outcome
  assert result.done and outcome["success"] is False and outcome["format_ok"] is True
  assert outcome["reason"] == reason
  assert (outcome["tests_passed"], outcome["tests_run"], outcome["tests_total"]) == (index,
                                                                                   index + 1, 3)
  failure = outcome["first_failure"]
  test = SUM.data["tests"][index]
  assert (failure["index"], failure["input"], failure["expected"]) == (index, test["input"],
                                                                       test["output"])
  if detail is not None:
    assert failure["detail"] == detail
  else:
    assert failure["detail"].startswith("SyntaxError")
  if reason == "timeout":  # the task's 0.5 s per test, not the env default
    assert failure["time_limit_s"] == 0.5 and time.monotonic() - start < 3


def test_the_task_memory_limit_applies(env, turn):
  task = Task("mem", "code", {**SUM.data, "id": "mem", "memory_mb": 300})
  outcome = env.start(task).step(turn(answer("x = bytearray(1 << 30)\nprint(3)"))).outcome
  assert outcome["reason"] == "memory" and outcome["first_failure"]["memory_mb"] == 300
  assert env.start(task).step(turn(answer(READ_INPUT))).outcome["success"] is True


@pytest.mark.parametrize("code, reason", [
    ("def add(a, b):\n    return a + b", "passed"),
    ("class Solution:\n    def add(self, a, b):\n        return a + b", "passed"),
    ("def add(a, b):\n    return tuple(a + b) if isinstance(a, list) else a + b", "passed"),
    ("def add(a, b):\n    return a + b if not isinstance(a, list) else a", "wrong_answer"),
    ("def plus(a, b):\n    return a + b", "exception"),
])
def test_call_based_tests(env, turn, code, reason):
  outcome = env.start(ADD).step(turn(answer(code))).outcome
  assert outcome["reason"] == reason and outcome["success"] is (reason == "passed")
  if reason == "wrong_answer":
    failure = outcome["first_failure"]
    assert (failure["input"], failure["expected"], failure["detail"]) == ("add([1], [2, 3])",
                                                                          "[1, 2, 3]", "[1]")
  if reason == "exception":
    assert "defines no function 'add'" in outcome["first_failure"]["detail"]


def test_wrong_then_right_continues_the_dialog_and_succeeds(tokenizer, turn, pool):
  env = CodeEnv(tokenizer, CodeEnvConfig(max_attempts=2), sandbox=pool)
  episode = env.start(SUM)
  wrong = answer("print(3)")
  first = episode.step(turn(wrong))
  assert not first.done and first.observation
  assert first.outcome["success"] is False and first.outcome["reason"] == "wrong_answer"
  text = tokenizer.decode(first.observation)
  assert text.startswith("<|start_header_id|>user<|end_header_id|>\n\n")
  assert "Input:\n```\n40 2\n```" in text and "Expected output:\n```\n42\n```" in text
  assert "Your output:\n```\n3\n```" in text
  assert text.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<think>\n")
  # prompt + turn + observation read as one dialog in the chat format
  feedback = text[len("<|start_header_id|>user<|end_header_id|>\n\n"):text.index("<|eot_id|>")]
  dialog = [{"role": "system", "content": system_prompt(reasoning=True)},
            {"role": "user", "content": user_message(parse_code(SUM.data))},
            {"role": "assistant", "content": THINK_START + wrong},
            {"role": "user", "content": feedback}]
  assert tokenizer.decode(episode.prompt + turn(wrong) + list(first.observation)) == \
      format_dialog(dialog, add_generation_prompt=True, reasoning=True)

  second = episode.step(turn(answer(READ_INPUT)))
  assert second.done and second.observation == ()
  assert second.outcome["success"] is True and second.outcome["attempt"] == 2
  assert env.reward_fn(second.outcome) == 1.0
  with pytest.raises(RuntimeError, match="done"):
    episode.step(turn(answer(READ_INPUT)))


def test_the_last_attempt_decides(tokenizer, turn, pool):
  env = CodeEnv(tokenizer, CodeEnvConfig(max_attempts=2, feedback_chars=40), sandbox=pool)
  episode = env.start(SUM)
  first = episode.step(turn(answer("print('x' * 500)")))
  text = tokenizer.decode(first.observation)
  assert "[...]" in text and "x" * 500 not in text  # the output is cut in the feedback
  last = episode.step(turn(answer("print(0)")))
  assert last.done and last.outcome["attempt"] == 2 and env.reward_fn(last.outcome) == -1.0


def test_a_sandbox_failure_raises_env_error(tokenizer, turn, broken_sandbox):
  env = CodeEnv(tokenizer, sandbox=broken_sandbox)
  with pytest.raises(EnvError) as e:
    env.start(SUM).step(turn(answer(READ_INPUT)))
  assert e.value.reason == "sandbox_error"


def test_episodes_step_concurrently_on_one_pool(env, turn):
  codes = [READ_INPUT, "print(0)", READ_BUFFER, "print(1)"] * 2
  with ThreadPoolExecutor(4) as threads:
    outcomes = list(threads.map(lambda c: env.start(SUM).step(turn(answer(c))).outcome, codes))
  assert [o["success"] for o in outcomes] == [True, False, True, False] * 2


def test_a_task_that_is_not_a_code_task_is_refused(env):
  with pytest.raises(ValueError, match="'m'.*not a code task"):
    env.start(Task("m", "math", {"id": "m", "problem": "1+1", "answer": "2"}))


def test_an_env_without_a_sandbox_starts_and_stops_its_own(tokenizer, turn, pool):
  del pool  # only for its skip when bubblewrap is missing
  with CodeEnv(tokenizer, CodeEnvConfig(sandbox_workers=1)) as env:
    assert env.start(SUM).step(turn(answer(READ_INPUT))).outcome["success"] is True
    own = env.sandbox
  with pytest.raises(SandboxError, match="closed"):
    own.run_python("print(1)")
