"""MBPP (Austin et al. 2021): write a function from a one-line statement and three asserts.

Prompt (Austin et al.'s wording): "You are an expert Python programmer, and here is
your task: TEXT Your code should pass these tests:\\n\\nTESTS\\n"; "plain" ends it with
"[BEGIN]\\n" and stops at "[DONE]", "chat"/"reasoning" ask for a python code block.
Check program: `code + "\\n" + test_setup_code + "\\n" + the asserts of test_list`
(setup after the code: in tasks 367 and 927 it uses a class the code defines).
"""

from __future__ import annotations

from collections.abc import Sequence

from cwm_jax.evals.code_extract import program_code
from cwm_jax.evals.codegen import CodegenSampling, evaluate_codegen, score_programs
from cwm_jax.evals.data import MbppProblem
from cwm_jax.evals.execution import ExecutionConfig
from cwm_jax.evals.model import Completer
from cwm_jax.evals.prompting import answer_text, encode_prompt
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


def completion_program(problem: MbppProblem, completion: str, prompt_format: str) -> str | None:
  answer = answer_text(prompt_format, completion)
  if answer is None:
    return None
  return check_program(problem, program_code(answer, STOP_STRINGS))


def score_completions(problems: Sequence[MbppProblem], completions: Sequence[Sequence[str]],
                      prompt_format: str, ks: Sequence[int] = (1,),
                      execution: ExecutionConfig = ExecutionConfig(), *, executor=None
                      ) -> tuple[dict, list[dict]]:
  programs = [[completion_program(p, c, prompt_format) for c in cs]
              for p, cs in zip(problems, completions, strict=True)]
  return score_programs([p.task_id for p in problems], programs, completions, ks, execution,
                        executor=executor)


def evaluate(completer: Completer, problems: Sequence[MbppProblem], prompt_format: str,
             sampling: CodegenSampling = CodegenSampling(),
             execution: ExecutionConfig = ExecutionConfig(), *, executor=None
             ) -> tuple[dict, list[dict]]:
  prompts = [build_prompt(completer.tokenizer, p, prompt_format) for p in problems]
  stops = STOP_STRINGS if prompt_format == "plain" else ()
  return evaluate_codegen(
      completer, [p.task_id for p in problems], prompts,
      lambda t, c: completion_program(problems[t], c, prompt_format), sampling, execution,
      stop_strings=stops, executor=executor)
