"""MBPP (Austin et al. 2021): write a function from a one-line statement and three asserts.

Prompt (Austin et al.'s wording): "You are an expert Python programmer, and here is
your task: TEXT Your code should pass these tests:\\n\\nTESTS\\n"; "plain" ends it with
"[BEGIN]\\n" and stops at "[DONE]", "chat"/"reasoning" ask for a python code block.
Check program: `code + "\\n" + test_setup_code + "\\n" + the asserts of test_list`
(setup after the code: in tasks 367 and 927 it uses a class the code defines).
"""

from __future__ import annotations

from cwm_jax.evals.code_extract import program_code
from cwm_jax.evals.codegen import CodegenBenchmark
from cwm_jax.evals.data import MbppProblem
from cwm_jax.evals.prompting import encode_prompt
from cwm_jax.tokenizer.base import Tokenizer

TASK_TEMPLATE = ("You are an expert Python programmer, and here is your task: {text} "
                 "Your code should pass these tests:\n\n{tests}\n")
PLAIN_SUFFIX = "[BEGIN]\n"
CHAT_SUFFIX = "\nWrite the solution in one ```python code block."
STOP_STRINGS = ("[DONE]",)


def build_prompt(tokenizer: Tokenizer, problem: MbppProblem, prompt_format: str) -> list[int]:
  task = TASK_TEMPLATE.format(text=problem.text.strip(), tests="\n".join(problem.test_list))
  return encode_prompt(tokenizer, prompt_format, plain=task + PLAIN_SUFFIX,
                       user=task + CHAT_SUFFIX)


def check_program(problem: MbppProblem, code: str) -> str:
  return "\n".join([code, problem.test_setup_code, *problem.test_list]) + "\n"


def answer_program(problem: MbppProblem, answer: str) -> str:
  """The check program of the answer's code (fenced block, else the text up to [DONE])."""
  return check_program(problem, program_code(answer, STOP_STRINGS))


BENCHMARK = CodegenBenchmark(build_prompt, answer_program, plain_stop_strings=STOP_STRINGS)
completion_program = BENCHMARK.completion_program
score_completions = BENCHMARK.score_completions
evaluate = BENCHMARK.evaluate
