"""MATH-500: boxed-answer accuracy, answers compared with math-verify and our sympy fallback.

The prediction is the content of the *last* `\\boxed{...}` (or `\\fbox{...}`) of the
answer text, read with balanced braces. It is equivalent to the reference answer
when, in order:
1. both normalise (latex_sympy.normalise_text) to the same text; else
2. math-verify parses both (each wrapped in `\\boxed{}`) and `verify(gold, pred)`
   says so; its verdict is final when it parsed both; else
3. our parser (latex_sympy) reads both and sympy finds them equal.
No model text is executed: math-verify parses LaTeX with an ANTLR grammar and
only digit/operator strings with sympy; latex_sympy never evaluates text.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence

from cwm_jax.evals import latex_sympy
from cwm_jax.evals.data import MathProblem
from cwm_jax.evals.model import Completer, complete_checked
from cwm_jax.evals.prompting import answer_text, encode_prompt
from cwm_jax.tokenizer.base import Tokenizer

_BOX_COMMANDS = (r"\boxed", r"\fbox")
USER_SUFFIX = "\n\nPut your final answer within \\boxed{}."
PLAIN_TEMPLATE = "Problem:\n{problem}\n\nSolution (final answer in \\boxed{{}}):\n"


def last_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` / `\\fbox{...}` (balanced braces), or of
  `\\boxed X` (up to the next space or `$`); None if there is none or it is unclosed."""
  start = max(text.rfind(c) for c in _BOX_COMMANDS)
  if start == -1:
    return None
  command = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
  i = start + len(command)
  if text.startswith(" ", i) and not text[i:].lstrip().startswith("{"):
    rest = text[i:].lstrip()
    end = next((k for k, ch in enumerate(rest) if ch in " $\n"), len(rest))
    return rest[:end] or None
  while i < len(text) and text[i] == " ":
    i += 1
  if i >= len(text) or text[i] != "{":
    return None
  depth = 0
  for k in range(i, len(text)):
    ch = text[k]
    if ch == "{" and text[k - 1] != "\\":
      depth += 1
    elif ch == "}" and text[k - 1] != "\\":
      depth -= 1
      if depth == 0:
        return text[i + 1:k]
  return None


def _math_verify(pred: str, gold: str) -> bool | None:
  """math-verify's verdict, or None when it cannot parse one of the answers."""
  from math_verify import parse, verify  # pylint: disable=import-outside-toplevel
  # math-verify's timeouts use SIGALRM, which only the main thread may set.
  main = threading.current_thread() is threading.main_thread()
  timeout = 5 if main else None
  gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=timeout)
  pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=timeout)
  if not gold_parsed or not pred_parsed:
    return None
  return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def equivalent(pred: str, gold: str) -> tuple[bool, str]:
  """(equal?, which step decided: "text", "math_verify", "sympy" or "unparsed")."""
  if latex_sympy.normalise_text(pred) == latex_sympy.normalise_text(gold):
    return True, "text"
  verdict = _math_verify(pred, gold)
  if verdict is not None:
    return verdict, "math_verify"
  try:
    return latex_sympy.equivalent(pred, gold), "sympy"
  except (latex_sympy.LatexParseError, TypeError, ValueError, ZeroDivisionError,
          RecursionError):
    return False, "unparsed"


def build_prompt(tokenizer: Tokenizer, problem: MathProblem, prompt_format: str) -> list[int]:
  return encode_prompt(tokenizer, prompt_format, user=problem.problem + USER_SUFFIX,
                       plain=PLAIN_TEMPLATE.format(problem=problem.problem))


def score_completions(problems: Sequence[MathProblem], completions: Sequence[str],
                      prompt_format: str) -> tuple[dict, list[dict]]:
  """(summary: accuracy, problems, reasons; one row per problem) of given completions."""
  rows, reasons = [], collections.Counter()
  for p, completion in zip(problems, completions, strict=True):
    text = answer_text(prompt_format, completion)
    pred = last_boxed(text) if text is not None else None
    if pred is None:
      correct, how = False, "no_answer" if text is None else "no_boxed"
    else:
      correct, how = equivalent(pred, p.answer)
    reason = "correct" if correct else ("wrong" if pred is not None and how != "unparsed"
                                        else how)
    reasons[reason] += 1
    rows.append({"unique_id": p.unique_id, "answer": p.answer, "prediction": pred,
                 "correct": correct, "decided_by": how, "reason": reason,
                 "completion": completion})
  summary = {"accuracy": sum(r["correct"] for r in rows) / len(rows) if rows else None,
             "problems": len(rows), "reasons": dict(sorted(reasons.items()))}
  return summary, rows


def evaluate(completer: Completer, problems: Sequence[MathProblem], prompt_format: str, *,
             max_new_tokens: int = 2048) -> tuple[dict, list[dict]]:
  """Boxed-answer accuracy of one greedy completion per problem."""
  prompts = [build_prompt(completer.tokenizer, p, prompt_format) for p in problems]
  outs = complete_checked(completer, prompts, n=1, max_new_tokens=max_new_tokens,
                          temperature=0.0)
  return score_completions(problems, [o[0] for o in outs], prompt_format)
