"""HumanEval (Chen et al. 2021): complete a function from its signature and docstring.

Check program, as the official harness builds it:
`solution + "\\n" + test + "\\n" + "check(ENTRY_POINT)\\n"`, where the solution is
the prompt plus the extracted completion (code_extract.function_completion_code).
"plain" prompts are the raw HumanEval prompt (a base model continues the function);
"chat"/"reasoning" ask for the whole function in a python code block.
"""

from __future__ import annotations

from collections.abc import Sequence

from cwm_jax.evals.code_extract import function_completion_code
from cwm_jax.evals.codegen import CodegenSampling, evaluate_codegen, score_programs
from cwm_jax.evals.data import HumanEvalProblem
from cwm_jax.evals.execution import ExecutionConfig
from cwm_jax.evals.model import Completer
from cwm_jax.evals.prompting import answer_text, encode_prompt
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


def completion_program(problem: HumanEvalProblem, completion: str, prompt_format: str
                       ) -> str | None:
  """Check program for one completion; None when it holds no answer."""
  answer = answer_text(prompt_format, completion)
  if answer is None:
    return None
  return check_program(problem, function_completion_code(problem.prompt, problem.entry_point,
                                                         answer))


def score_completions(problems: Sequence[HumanEvalProblem], completions: Sequence[Sequence[str]],
                      prompt_format: str, ks: Sequence[int] = (1,),
                      execution: ExecutionConfig = ExecutionConfig(), *, executor=None
                      ) -> tuple[dict, list[dict]]:
  """Scores given completions (e.g. stored generations) without a model."""
  programs = [[completion_program(p, c, prompt_format) for c in cs]
              for p, cs in zip(problems, completions, strict=True)]
  return score_programs([p.task_id for p in problems], programs, completions, ks, execution,
                        executor=executor)


def evaluate(completer: Completer, problems: Sequence[HumanEvalProblem], prompt_format: str,
             sampling: CodegenSampling = CodegenSampling(),
             execution: ExecutionConfig = ExecutionConfig(), *, executor=None
             ) -> tuple[dict, list[dict]]:
  """pass@k of `completer` on `problems` (summary, one row per sample)."""
  prompts = [build_prompt(completer.tokenizer, p, prompt_format) for p in problems]
  return evaluate_codegen(
      completer, [p.task_id for p in problems], prompts,
      lambda t, c: completion_program(problems[t], c, prompt_format), sampling, execution,
      executor=executor)
