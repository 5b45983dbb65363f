"""HumanEval (Chen et al. 2021): complete a function from its signature and docstring.

Check program, as the official harness builds it:
`solution + "\\n" + test + "\\n" + "check(ENTRY_POINT)\\n"`, where the solution is
the prompt plus the extracted completion (code_extract.function_completion_code).
"plain" prompts are the raw HumanEval prompt (a base model continues the function);
"chat"/"reasoning" ask for the whole function in a python code block.
"""

from __future__ import annotations

from cwm_jax.evals.code_extract import function_completion_code
from cwm_jax.evals.codegen import CodegenBenchmark
from cwm_jax.evals.data import HumanEvalProblem
from cwm_jax.evals.prompting import encode_prompt
from cwm_jax.tokenizer.base import Tokenizer

USER_TEMPLATE = ("Complete the following Python function. Answer with the whole function "
                 "(signature included) in one ```python code block.\n\n```python\n{prompt}```")


def build_prompt(tokenizer: Tokenizer, problem: HumanEvalProblem, prompt_format: str
                 ) -> list[int]:
  return encode_prompt(tokenizer, prompt_format, plain=problem.prompt,
                       user=USER_TEMPLATE.format(prompt=problem.prompt))


def check_program(problem: HumanEvalProblem, solution: str) -> str:
  """The official check: the solution, the problem's `check`, then `check(entry_point)`."""
  return f"{solution}\n{problem.test}\ncheck({problem.entry_point})\n"


def answer_program(problem: HumanEvalProblem, answer: str) -> str:
  """The check program of the function the answer completes or restates."""
  return check_program(problem, function_completion_code(problem.prompt, problem.entry_point,
                                                         answer))


BENCHMARK = CodegenBenchmark(build_prompt, answer_program)
completion_program = BENCHMARK.completion_program
score_completions = BENCHMARK.score_completions
evaluate = BENCHMARK.evaluate
