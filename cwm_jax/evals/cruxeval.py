"""CruxEval (Gu et al. 2024): predict a function's output (CruxEval-O) or an input for a
given output (CruxEval-I); directly, or for -O through a full predicted trace.

Direct prompts show the code and an assertion with `??` in place of the answer.
"plain" prompts end in the assertion's known part (`assert f(INPUT) == ` or
`assert f(`) for a base model to continue up to the end of the line;
"chat"/"reasoning" ask for the completed assertion between [ANSWER] and [/ANSWER].
The answer is read from the completed assertion with Python's `ast` (parsing only;
nothing is evaluated on the host): the right-hand side for -O, the call's
arguments for -I.

Scoring, as the official harness does, executes in the sandbox:
- -O: `CODE` then `assert OUTPUT == PREDICTION`; a prediction that calls `f` is
  refused ("calls_f"; the official harness refuses the literal `f(INPUT)`);
- -I: `CODE` then `assert OUTPUT == f(PREDICTED_ARGS)`.
Via traces (-O): the prompt is `encode_trace_prompt(cruxeval_context(code, input))`
(FORMATS.md), one greedy trace is generated, and its final return value
(trace_metrics.final_return_value) is the prediction, scored as -O above.
"""

from __future__ import annotations

import ast
import collections
import re
from collections.abc import Sequence

from cwm_jax.evals.data import CruxEvalProblem
from cwm_jax.evals.execution import ExecutionConfig, run_checks
from cwm_jax.evals.model import Completer, complete_checked
from cwm_jax.evals.prompting import answer_text, encode_prompt
from cwm_jax.evals.trace_metrics import final_return_value
from cwm_jax.tokenizer.base import Tokenizer
from cwm_jax.tokenizer.formats import encode_trace_prompt
from data_pipelines.traces.sources import cruxeval_context

MODES = ("output", "input")
MAX_ANSWER_CHARS = 20_000  # longer answers are not parsed (no CruxEval answer comes close)

_INSTRUCTION = {
    "output": ("Here is a Python function and an assertion on its result. Replace ?? with the "
               "literal value the function returns on that input (no expressions, no calls)."),
    "input": ("Here is a Python function and an assertion on its result. Replace ?? with an "
              "input (the arguments of f) for which the function returns that value."),
}
_ANSWER_FORMAT = ("Give the completed assertion between [ANSWER] and [/ANSWER], e.g. "
                  "[ANSWER]assert f(1) == 2[/ANSWER].")
_ANSWER_RE = re.compile(r"\[ANSWER\](.*?)(?:\[/ANSWER\]|\Z)", re.DOTALL)


def _check_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f"CruxEval mode={mode!r}; expected one of {MODES}")
  return mode


def _question(problem: CruxEvalProblem, mode: str) -> str:
  assertion = (f"assert f({problem.input}) == ??" if mode == "output"
               else f"assert f(??) == {problem.output}")
  return f"{_INSTRUCTION[mode]}\n\n```python\n{problem.code}\n{assertion}\n```\n"


def _plain_head(problem: CruxEvalProblem, mode: str) -> str:
  return f"assert f({problem.input}) == " if mode == "output" else "assert f("


def build_prompt(tokenizer: Tokenizer, problem: CruxEvalProblem, mode: str, prompt_format: str
                 ) -> list[int]:
  _check_mode(mode)
  question = _question(problem, mode)
  return encode_prompt(tokenizer, prompt_format, user=question + _ANSWER_FORMAT,
                       plain=question + "[ANSWER]\n" + _plain_head(problem, mode))


def _parse_assertion(text: str) -> ast.Compare | None:
  """`assert LEFT == RIGHT` (one statement) -> its Compare node, else None."""
  if len(text) > MAX_ANSWER_CHARS:
    return None
  try:
    tree = ast.parse(text.strip())
  except (SyntaxError, ValueError, RecursionError, MemoryError):
    return None
  if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
    return None
  test = tree.body[0].test
  if (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
    return test
  return None


def extract_answer(completion: str, problem: CruxEvalProblem, mode: str, prompt_format: str
                   ) -> str | None:
  """The predicted output (-O) or argument text (-I); None when there is none."""
  _check_mode(mode)
  text = answer_text(prompt_format, completion)
  if text is None:
    return None
  if prompt_format == "plain":
    text = _plain_head(problem, mode) + text.split("[/ANSWER]")[0].split("\n")[0]
  else:
    blocks = _ANSWER_RE.findall(text)
    text = blocks[-1].strip() if blocks else text.strip()
  compare = _parse_assertion(text)
  source = text.strip()
  if compare is None:
    return source if mode == "output" and source and "assert" not in source else None
  if mode == "output":
    return ast.get_source_segment(source, compare.comparators[0])
  call = compare.left
  if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "f"):
    return None
  call_text = ast.get_source_segment(source, call)
  return call_text[call_text.index("(") + 1:call_text.rindex(")")].strip()


def _calls_f(expression: str) -> bool:
  try:
    tree = ast.parse(expression, mode="eval")
  except (SyntaxError, ValueError, RecursionError, MemoryError):
    return False  # the sandbox reports the syntax error
  return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "f"
             for n in ast.walk(tree))


def check_program(problem: CruxEvalProblem, mode: str, answer: str) -> str:
  """The official check: the code, then `assert OUTPUT == answer` (-O) or
  `assert OUTPUT == f(answer)` (-I)."""
  _check_mode(mode)
  rhs = answer if mode == "output" else f"f({answer})"
  return f"{problem.code}\nassert {problem.output} == {rhs}\n"


def score_answers(problems: Sequence[CruxEvalProblem], answers: Sequence[str | None], mode: str,
                  execution: ExecutionConfig = ExecutionConfig(), *,
                  completions: Sequence[str] | None = None, executor=None
                  ) -> tuple[dict, list[dict]]:
  """Runs the checks of extracted answers (None: "no_answer") in the sandbox.

  Returns (summary: accuracy, problems, reasons), one row per problem.
  """
  _check_mode(mode)
  reasons_of = {}
  to_run = []
  for i, (p, a) in enumerate(zip(problems, answers, strict=True)):
    if a is None:
      reasons_of[i] = ("no_answer", "")
    elif mode == "output" and _calls_f(a):
      reasons_of[i] = ("calls_f", "the prediction calls f instead of stating a value")
    else:
      to_run.append(i)
  results = run_checks([check_program(problems[i], mode, answers[i]) for i in to_run],
                       execution, executor=executor)
  for i, r in zip(to_run, results):
    reasons_of[i] = (r.reason, r.detail)
  rows, reasons = [], collections.Counter()
  for i, p in enumerate(problems):
    reason, detail = reasons_of[i]
    reasons[reason] += 1
    row = {"id": p.id, "mode": mode, "answer": answers[i], "passed": reason == "passed",
           "reason": reason, "detail": detail}
    if completions is not None:
      row["completion"] = completions[i]
    rows.append(row)
  summary = {"accuracy": sum(r["passed"] for r in rows) / len(rows) if rows else None,
             "problems": len(rows), "reasons": dict(sorted(reasons.items()))}
  return summary, rows


def evaluate_direct(completer: Completer, problems: Sequence[CruxEvalProblem], mode: str,
                    prompt_format: str, *, max_new_tokens: int = 1024,
                    execution: ExecutionConfig = ExecutionConfig(), executor=None
                    ) -> tuple[dict, list[dict]]:
  """CruxEval-O (mode="output") or -I (mode="input") by direct prompting, greedy."""
  prompts = [build_prompt(completer.tokenizer, p, mode, prompt_format) for p in problems]
  stops = ("\n",) if prompt_format == "plain" else ()
  outs = complete_checked(completer, prompts, n=1, max_new_tokens=max_new_tokens,
                          temperature=0.0, stop_strings=stops)
  completions = [o[0] for o in outs]
  answers = [extract_answer(c, p, mode, prompt_format) for c, p in zip(completions, problems)]
  return score_answers(problems, answers, mode, execution, completions=completions,
                       executor=executor)


def trace_prompt(tokenizer: Tokenizer, problem: CruxEvalProblem) -> list[int]:
  """The trace prompt of a CruxEval problem (FORMATS.md function-level CONTEXT)."""
  return encode_trace_prompt(tokenizer, cruxeval_context(problem.code, problem.input))


def evaluate_output_via_trace(completer: Completer, problems: Sequence[CruxEvalProblem], *,
                              max_new_tokens: int = 4096,
                              execution: ExecutionConfig = ExecutionConfig(), executor=None
                              ) -> tuple[dict, list[dict]]:
  """CruxEval-O through full trace prediction: the final return value of one greedy
  trace is the predicted output."""
  prompts = [trace_prompt(completer.tokenizer, p) for p in problems]
  outs = complete_checked(completer, prompts, n=1, max_new_tokens=max_new_tokens,
                          temperature=0.0)
  completions = [o[0] for o in outs]
  answers = [final_return_value(c) for c in completions]
  return score_answers(problems, answers, "output", execution, completions=completions,
                       executor=executor)
