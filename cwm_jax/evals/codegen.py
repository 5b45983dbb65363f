"""Code generation with unit tests (HumanEval, MBPP): sample, run in the sandbox, pass@k.

A benchmark (`CodegenBenchmark`) supplies only what differs: the prompt of a
problem (token ids) and the check program for one answer (solution + the
problem's tests); answer extraction, sampling and scoring are shared here. Each
of the n samples per task becomes one row with its pass/fail reason; the summary
holds the unbiased pass@k (passk.py) over tasks and the count of samples per
failure reason.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from cwm_jax.evals.execution import ExecutionConfig, run_checks
from cwm_jax.evals.model import Completer, complete_checked
from cwm_jax.evals.passk import mean_pass_at_k
from cwm_jax.evals.prompting import answer_text
from cwm_jax.tokenizer.base import Tokenizer


@dataclasses.dataclass(frozen=True)
class CodegenSampling:
  """n samples per task at this temperature/top_p; pass@k for each k in ks (k <= n)."""
  n: int = 1
  temperature: float = 0.0
  top_p: float = 1.0
  max_new_tokens: int = 512
  ks: tuple[int, ...] = (1,)
  seed: int = 0

  def __post_init__(self):
    object.__setattr__(self, "ks", tuple(self.ks))
    if not (isinstance(self.n, int) and self.n >= 1):
      raise ValueError(f"CodegenSampling.n={self.n!r}; expected a positive int")
    if not self.ks or any(not isinstance(k, int) or not 1 <= k <= self.n for k in self.ks):
      raise ValueError(f"CodegenSampling.ks={self.ks!r}; expected ints in 1..n={self.n}")
    if self.temperature < 0 or not 0 < self.top_p <= 1:
      raise ValueError(f"CodegenSampling temperature={self.temperature!r}, top_p={self.top_p!r};"
                       " expected temperature >= 0 and 0 < top_p <= 1")
    if self.n > 1 and self.temperature == 0:
      raise ValueError(f"CodegenSampling.n={self.n} with temperature 0 gives n identical greedy "
                       "samples; set a temperature > 0 (e.g. 0.8) for pass@k with k > 1")
    if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
      raise ValueError(f"CodegenSampling.max_new_tokens={self.max_new_tokens!r}; expected >= 1")


def score_programs(task_ids: Sequence, programs: Sequence[Sequence[str | None]],
                   completions: Sequence[Sequence[str]], ks: Sequence[int],
                   execution: ExecutionConfig = ExecutionConfig(), *, executor=None
                   ) -> tuple[dict, list[dict]]:
  """Runs every (task, sample) program; None (no answer extracted) fails as "no_answer".

  Returns (summary, rows): summary has pass@k, tasks, samples, passed samples and
  reasons (sample counts per reason); one row per sample.
  """
  flat = [(t, s) for t in range(len(task_ids)) for s in range(len(programs[t]))]
  to_run = [(t, s) for t, s in flat if programs[t][s] is not None]
  results = dict(zip(to_run, run_checks([programs[t][s] for t, s in to_run], execution,
                                        executor=executor)))
  rows, reasons, counts = [], collections.Counter(), []
  for t, task_id in enumerate(task_ids):
    passed = 0
    for s, program in enumerate(programs[t]):
      r = results.get((t, s))
      reason = r.reason if r is not None else "no_answer"
      passed += reason == "passed"
      reasons[reason] += 1
      rows.append({"task_id": task_id, "sample": s, "passed": reason == "passed",
                   "reason": reason, "detail": r.detail if r is not None else "",
                   "completion": completions[t][s], "program": program})
    counts.append((len(programs[t]), passed))
  summary = {**mean_pass_at_k(counts, ks), "tasks": len(task_ids), "samples": len(flat),
             "passed_samples": sum(c for _, c in counts), "reasons": dict(sorted(reasons.items()))}
  return summary, rows


def evaluate_codegen(completer: Completer, task_ids: Sequence, prompts: Sequence[list[int]],
                     to_program: Callable[[int, str], str | None], sampling: CodegenSampling,
                     execution: ExecutionConfig = ExecutionConfig(), *,
                     stop_strings: Sequence[str] = (), executor=None) -> tuple[dict, list[dict]]:
  """Samples `sampling.n` completions per prompt, builds programs with
  `to_program(task_index, completion)` and scores them (see `score_programs`)."""
  completions = complete_checked(
      completer, prompts, n=sampling.n, max_new_tokens=sampling.max_new_tokens,
      temperature=sampling.temperature, top_p=sampling.top_p, stop_strings=stop_strings,
      seed=sampling.seed)
  programs = [[to_program(t, c) for c in cs] for t, cs in enumerate(completions)]
  return score_programs(task_ids, programs, completions, sampling.ks, execution,
                        executor=executor)


@dataclasses.dataclass(frozen=True)
class CodegenBenchmark:
  """A code-generation benchmark: `build_prompt(tokenizer, problem, prompt_format)`
  gives the prompt ids, `answer_program(problem, answer)` the check program for the
  answer part of a completion (prompting.answer_text), and `plain_stop_strings`
  end a "plain" completion (a base model has no end-of-turn token).
  Problems only need a `task_id`."""
  build_prompt: Callable[[Tokenizer, Any, str], list[int]]
  answer_program: Callable[[Any, str], str]
  plain_stop_strings: tuple[str, ...] = ()

  def completion_program(self, problem, completion: str, prompt_format: str) -> str | None:
    """Check program for one completion; None when it holds no answer."""
    answer = answer_text(prompt_format, completion)
    return None if answer is None else self.answer_program(problem, answer)

  def score_completions(self, problems: Sequence, completions: Sequence[Sequence[str]],
                        prompt_format: str, ks: Sequence[int] = (1,),
                        execution: ExecutionConfig = ExecutionConfig(), *, executor=None
                        ) -> tuple[dict, list[dict]]:
    """Scores given completions (e.g. stored generations) without a model."""
    programs = [[self.completion_program(p, c, prompt_format) for c in cs]
                for p, cs in zip(problems, completions, strict=True)]
    return score_programs([p.task_id for p in problems], programs, completions, ks, execution,
                          executor=executor)

  def evaluate(self, completer: Completer, problems: Sequence, prompt_format: str,
               sampling: CodegenSampling = CodegenSampling(),
               execution: ExecutionConfig = ExecutionConfig(), *, executor=None
               ) -> tuple[dict, list[dict]]:
    """pass@k of `completer` on `problems` (summary, one row per sample)."""
    prompts = [self.build_prompt(completer.tokenizer, p, prompt_format) for p in problems]
    stops = self.plain_stop_strings if prompt_format == "plain" else ()
    return evaluate_codegen(
        completer, [p.task_id for p in problems], prompts,
        lambda t, c: self.completion_program(problems[t], c, prompt_format), sampling, execution,
        stop_strings=stops, executor=executor)
