"""MATH-500 scoring: every dev reference answer matches itself and its boxed form,
answers with a changed number (or word) do not; the boxed-answer reader; our sympy
fallback parser against math-verify's verdicts and hostile input."""

import re
import threading

import pytest

from cwm_jax.evals import latex_sympy, math500
from cwm_jax.evals.data import load_math500

from tests.evals.conftest import dev_file


@pytest.fixture(scope="module")
def problems():
  return load_math500(dev_file("math500_dev.jsonl"))


def _perturb(answer: str) -> str:
  """The last number + 1, or a changed sign or word when there is no number."""
  digits = list(re.finditer(r"\d+", answer))
  if digits:
    m = digits[-1]
    return answer[:m.start()] + str(int(m.group()) + 1) + answer[m.end():]
  if "-" in answer:
    return answer.replace("-", "+")
  return re.sub(r"\\text\{[^}]*\}", r"\\text{hyperbola}", answer)


def test_every_reference_answer_matches_itself_boxed(problems):
  completions = [f"We compute.\nThe answer is $\\boxed{{{p.answer}}}$." for p in problems]
  summary, rows = math500.score_completions(problems, completions, "chat")
  assert summary["accuracy"] == 1.0 and summary["problems"] == 100
  assert [r["prediction"] for r in rows] == [p.answer for p in problems]
  for p in problems:
    assert math500.equivalent(p.answer, p.answer)[0]


def test_perturbed_answers_do_not_match(problems):
  perturbed = [_perturb(p.answer) for p in problems]
  assert all(a != p.answer for a, p in zip(perturbed, problems))
  completions = [f"\\boxed{{{a}}}" for a in perturbed]
  summary, rows = math500.score_completions(problems, completions, "plain")
  assert summary["accuracy"] == 0.0, [(r["answer"], r["prediction"]) for r in rows
                                      if r["correct"]]


def test_equivalent_forms_match():
  for pred, gold in [("0.5", "\\frac{1}{2}"), ("\\sqrt{20}", "2\\sqrt{5}"), ("10080", "10,\\!080"),
                     ("\\dfrac{4}{3}", "\\frac43"), ("x = 3", "3"), ("180", "180^\\circ")]:
    assert math500.equivalent(pred, gold)[0], (pred, gold)
  assert not math500.equivalent("\\frac{1}{3}", "0.3")[0]


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{1} then \\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),
    ("\\boxed{\\left\\{ 1, 2 \\right\\}}", "\\left\\{ 1, 2 \\right\\}"),
    ("$\\boxed 5$", "5"),
    ("\\fbox{7}", "7"),
    ("\\boxed{12", None),
    ("no box", None),
])
def test_last_boxed(text, expected):
  assert math500.last_boxed(text) == expected


@pytest.mark.parametrize("pred, gold, equal", [
    ("\\frac{1}{2}", "0.5", True),
    ("2\\sqrt{5}", "\\sqrt{20}", True),
    ("\\sqrt[3]{8}", "2", True),
    ("\\dfrac{3}{4}", "3/4", True),
    ("y = -2x", "2x + y = 0", True),
    ("x=5", "5", True),
    ("10,\\!080", "10080", True),
    ("(1, 2)", "[1, 2]", False),
    ("(2,\\infty)", "\\left( 2, \\infty \\right)", True),
    ("5.4 \\text{ cents}", "5.4", True),
    ("\\text{ellipse}", "\\text{Ellipse}", False),
    ("7\\pi", "\\pi \\cdot 7", True),
    ("3R^2", "3R^3", False),
])
def test_sympy_fallback(pred, gold, equal):
  assert latex_sympy.equivalent(pred, gold) is equal


@pytest.mark.parametrize("hostile", [
    "__import__('os').system('true')", "9^{9^{9^{9}}}", "1" * 100, "x" * 1000,
    "\\begin{pmatrix} 1 \\end{pmatrix}",
])
def test_sympy_fallback_refuses_what_it_does_not_know(hostile):
  with pytest.raises(latex_sympy.LatexParseError):
    latex_sympy.parse_answer(hostile)


def test_equivalent_off_the_main_thread():
  out = []
  t = threading.Thread(target=lambda: out.append(math500.equivalent("\\frac{2}{4}", "0.5")))
  t.start()
  t.join()
  assert out == [(True, "math_verify")]


def test_reasoning_without_answer(problems):
  summary, rows = math500.score_completions(problems[:2], ["<think>\nhmm", "no box</think>42"],
                                            "reasoning")
  assert [r["reason"] for r in rows] == ["no_answer", "no_boxed"]
