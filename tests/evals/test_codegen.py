"""HumanEval / MBPP scoring in the sandbox: every canonical solution of the dev files
passes, deliberately wrong ones fail with the right reason; pass@k against the exact
binomial formula; code extraction."""

import ast
import fractions
import math
import warnings

import pytest

from cwm_jax.evals import code_extract, humaneval, mbpp
from cwm_jax.evals.codegen import CodegenSampling
from cwm_jax.evals.data import load_humaneval, load_mbpp
from cwm_jax.evals.execution import ExecutionConfig, run_checks
from cwm_jax.evals.passk import mean_pass_at_k, pass_at_k

from tests.evals.conftest import dev_file


@pytest.mark.parametrize("n", [1, 2, 5, 10, 37, 200])
def test_pass_at_k_equals_the_binomial_formula(n):
  for c in range(n + 1):
    for k in range(1, n + 1):
      exact = 1 - fractions.Fraction(math.comb(n - c, k), math.comb(n, k))
      assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)


def test_pass_at_k_rejects_bad_counts():
  with pytest.raises(ValueError, match="k=3 must lie in 1..n=2"):
    pass_at_k(2, 1, 3)
  with pytest.raises(ValueError, match="c=3"):
    pass_at_k(2, 3, 1)
  assert mean_pass_at_k([(2, 1), (2, 0)], [1, 2]) == {"pass@1": 0.25, "pass@2": 0.5}


def _parse(code: str) -> ast.Module:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", SyntaxWarning)  # some MBPP regexes use "\." escapes
    warnings.simplefilter("ignore", DeprecationWarning)
    return ast.parse(code)


def _off_by_one(code: str) -> str:
  """Every `return X` becomes `return (X) + 1`."""
  class T(ast.NodeTransformer):
    def visit_Return(self, node):
      if node.value is not None:
        node.value = ast.BinOp(node.value, ast.Add(), ast.Constant(1))
      return node
  return ast.unparse(ast.fix_missing_locations(T().visit(_parse(code))))


def _returns_none(code: str) -> str:
  class T(ast.NodeTransformer):
    def visit_Return(self, node):
      return ast.Return(ast.Constant(None))
  return ast.unparse(ast.fix_missing_locations(T().visit(_parse(code))))


@pytest.fixture(scope="module")
def he():
  return load_humaneval(dev_file("humaneval_dev.jsonl"))


@pytest.fixture(scope="module")
def mb():
  return load_mbpp(dev_file("mbpp_dev.jsonl"))


def test_humaneval_canonical_solutions_pass_wrong_ones_fail(he, need_sandbox):
  fence = "Here it is:\n```python\n{}\n```\nDone."
  completions = [[p.canonical_solution,                                   # raw continuation
                  fence.format(p.prompt + p.canonical_solution),           # fenced function
                  "    return None\n",
                  fence.format(_off_by_one(p.prompt + p.canonical_solution))]
                 for p in he]
  summary, rows = humaneval.score_completions(he, completions, "chat", ks=(1,))
  by_sample = {s: [r for r in rows if r["sample"] == s] for s in range(4)}
  assert sum(r["passed"] for r in by_sample[0]) == len(he) == 40
  assert sum(r["passed"] for r in by_sample[1]) == 40
  assert sum(r["passed"] for r in by_sample[2]) == 0
  assert sum(r["passed"] for r in by_sample[3]) == 0
  assert {r["reason"] for r in by_sample[2] + by_sample[3]} <= {"assertion", "exception"}
  assert summary["pass@1"] == 0.5 and summary["passed_samples"] == 80


def test_mbpp_canonical_solutions_pass_wrong_ones_fail(mb, need_sandbox):
  completions = [[p.code, "```python\n" + _returns_none(p.code) + "\n```",
                  _off_by_one(p.code) + "\n[DONE]"] for p in mb]
  summary, rows = mbpp.score_completions(mb, completions, "plain", ks=(1, 3))
  passed = [sum(r["passed"] for r in rows if r["sample"] == s) for s in range(3)]
  assert passed == [100, 0, 0]
  assert summary["pass@3"] == 1.0 and summary["pass@1"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("program, reason", [
    ("def f(:\n  pass\n", "syntax"),
    ("assert 1 == 2, 'nope'\n", "assertion"),
    ("raise KeyError('k')\n", "exception"),
    ("import sys\nsys.exit(0)\n", "exception"),          # exiting early is not passing
    ("import os\nos._exit(0)\n", "exit"),
    ("while True:\n  pass\n", "timeout"),
    ("x = bytearray(4 << 30)\n", "memory"),
    ("print('ok')\n", "passed"),
])
def test_check_reasons(program, reason, need_sandbox):
  (result,) = run_checks([program], ExecutionConfig(timeout_s=2.0, memory_mb=512, workers=1))
  assert result.reason == reason, result
  assert result.passed == (reason == "passed")


def test_reasoning_completion_without_answer_is_no_answer(he, need_sandbox):
  p = he[0]
  good = "<think>\nwe loop</think>\n```python\n" + p.prompt + p.canonical_solution + "```<|eot_id|>"
  summary, rows = humaneval.score_completions([p], [[good, "<think>\nstill thinking"]],
                                              "reasoning", ks=(1, 2))
  assert [r["reason"] for r in rows] == ["passed", "no_answer"]
  assert summary["reasons"] == {"no_answer": 1, "passed": 1}


def test_evaluate_samples_n_per_task_with_the_given_settings(he, tokenizer, function_completer,
                                                             need_sandbox):
  problems = he[:3]
  solutions = {p.prompt: p.canonical_solution for p in problems}
  # "plain": the prompt is BOS + the HumanEval prompt; two samples, one of them right.
  model = function_completer(tokenizer, lambda text, kw: [solutions[text[len("<|begin_of_text|>"):]],
                                                          "    return 0\n"])
  sampling = CodegenSampling(n=2, temperature=0.8, top_p=0.95, max_new_tokens=300, ks=(1, 2),
                             seed=5)
  summary, rows = humaneval.evaluate(model, problems, "plain", sampling)
  assert model.calls == [dict(n=2, max_new_tokens=300, temperature=0.8, top_p=0.95,
                              stop_strings=(), stop_token_ids=(), seed=5)]
  assert summary["pass@1"] == 0.5 and summary["pass@2"] == 1.0 and len(rows) == 6


@pytest.mark.parametrize("prompt_format, stops", [("plain", ("[DONE]",)), ("chat", ())])
def test_mbpp_evaluate_stops_plain_completions_at_done(mb, tokenizer, function_completer,
                                                       need_sandbox, prompt_format, stops):
  problems = mb[:3]

  def answer(text, kwargs):
    (p,) = [p for p in problems if p.text.strip() in text]
    return p.code + "\n[DONE]\nprint(1)" if prompt_format == "plain" else (
        f"```python\n{p.code}\n```\nprint(1)")

  model = function_completer(tokenizer, answer)
  summary, rows = mbpp.evaluate(model, problems, prompt_format)
  assert model.calls == [dict(n=1, max_new_tokens=512, temperature=0.0, top_p=1.0,
                              stop_strings=stops, stop_token_ids=(), seed=0)]
  # The module docstring's check program: code, test_setup_code, then the asserts.
  assert [r["program"] for r in rows] == [
      "\n".join([p.code + "\n", p.test_setup_code, *p.test_list]) + "\n" for p in problems]
  assert summary["pass@1"] == 1.0 and [r["reason"] for r in rows] == ["passed"] * 3


def test_codegen_sampling_validation():
  with pytest.raises(ValueError, match="ks"):
    CodegenSampling(n=2, temperature=0.8, ks=(1, 5))
  with pytest.raises(ValueError, match="temperature 0"):
    CodegenSampling(n=4, ks=(1,))


@pytest.mark.parametrize("completion, expected", [
    ("```python\ndef g():\n  return 1\n```\nmore ```python\nx\n```", "def g():\n  return 1\n"),
    ("```\nx = 1\n", "x = 1\n"),                       # unclosed fence runs to the end
    ("```bash\nls\n```\n```py\ny = 2\n```", "y = 2\n"),  # first python block
    ("no code here", None),
])
def test_fenced_code(completion, expected):
  assert code_extract.fenced_code(completion) == expected


def test_function_completion_code_modes():
  prompt = 'def add(a, b):\n    """Add."""\n'
  raw = "    return a + b\n\ndef other():\n    pass\n"
  assert code_extract.function_completion_code(prompt, "add", raw) == prompt + "    return a + b\n"
  whole = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"
  assert code_extract.function_completion_code(prompt, "add", whole) == (
      prompt + "\ndef add(a, b):\n    return a + b\n")
  body = "```python\n    return a + b\n```"
  assert code_extract.function_completion_code(prompt, "add", body) == (
      prompt + "    return a + b\n")
