"""CruxEval scoring in the sandbox: the reference outputs and inputs of all 200 dev
problems score 100% in every prompt format; changed answers fail; CruxEval-O through
traces scores 100% when the model replays the real tracer's traces."""

import pytest

from cwm_jax.evals import cruxeval
from cwm_jax.evals.data import load_cruxeval
from data_pipelines.traces import executors
from data_pipelines.traces.sources import cruxeval_requests
from data_pipelines.traces.trace import trace_requests

from tests.evals.conftest import dev_file


@pytest.fixture(scope="module")
def problems():
  return load_cruxeval(dev_file("cruxeval_dev.jsonl"))


def _answer_text(p, mode, prompt_format, value=None):
  """A completion stating the reference answer (or `value`) in the format's own way."""
  if mode == "output":
    value = p.output if value is None else value
    if prompt_format == "plain":
      return value + "\n[/ANSWER]"
    body = f"[ANSWER]assert f({p.input}) == {value}[/ANSWER]"
  else:
    value = p.input if value is None else value
    if prompt_format == "plain":
      return f"{value}) == {p.output}\n[/ANSWER]"
    body = f"[ANSWER]\nassert f({value}) == {p.output}\n[/ANSWER]"
  if prompt_format == "reasoning":
    return "<think>\nLet me run it.\n</think>\n" + body + "<|eot_id|>"
  return "Sure. " + body + "<|eot_id|>"


@pytest.mark.parametrize("mode", cruxeval.MODES)
@pytest.mark.parametrize("prompt_format", ["plain", "chat", "reasoning"])
def test_reference_answers_score_100_percent(problems, mode, prompt_format, need_sandbox):
  answers = [cruxeval.extract_answer(_answer_text(p, mode, prompt_format), p, mode,
                                     prompt_format) for p in problems]
  expected = [p.output if mode == "output" else p.input.strip() for p in problems]
  assert answers == expected
  summary, rows = cruxeval.score_answers(problems, answers, mode)
  assert summary["accuracy"] == 1.0 and summary["problems"] == 200
  assert all(r["reason"] == "passed" for r in rows)


def test_wrong_answers_fail(problems, need_sandbox):
  wrong_out = [f"({p.output}, 0)" for p in problems]      # never equal to the output
  summary, rows = cruxeval.score_answers(problems, wrong_out, "output")
  assert summary["accuracy"] == 0.0 and summary["reasons"] == {"assertion": 200}
  called = [f"f({p.input})" for p in problems]             # computing, not predicting
  assert cruxeval.score_answers(problems, called, "output")[0]["reasons"] == {"calls_f": 200}
  # -I with another problem's input: fails unless it happens to give the same output,
  # which a plain sandboxed run of f on that input decides.
  shifted = [problems[(i + 1) % len(problems)].input for i in range(len(problems))]
  summary, rows = cruxeval.score_answers(problems, shifted, "input")
  assert summary["accuracy"] < 0.1
  assert cruxeval.score_answers(problems[:3], [None, "1 +", p.input if (p := problems[2]) else
                                               None], "input")[0]["reasons"] == {
      "no_answer": 1, "passed": 1, "syntax": 1}


def test_evaluate_direct_end_to_end(problems, tokenizer, function_completer, need_sandbox):
  subset = problems[:20]
  by_code = {p.code: p for p in subset}

  def answer(text, kwargs):
    p = next(p for code, p in by_code.items() if code in text)
    return _answer_text(p, "input", "chat")

  model = function_completer(tokenizer, answer)
  summary, rows = cruxeval.evaluate_direct(model, subset, "input", "chat", max_new_tokens=64)
  assert summary["accuracy"] == 1.0
  assert model.calls[0]["temperature"] == 0.0 and model.calls[0]["n"] == 1
  assert rows[0]["completion"].endswith("<|eot_id|>")


def test_output_via_trace_replaying_real_traces(problems, tokenizer, trace_oracle, need_sandbox):
  records = [{"id": p.id, "code": p.code, "input": p.input} for p in problems]
  results = trace_requests(cruxeval_requests(records), executor=executors.sandbox_executor,
                           batch_size=50, num_workers=2)
  assert all(r.ok for r in results)
  traces = [r.trace for r in results]
  # ~8% of CruxEval programs run comprehension/genexpr/lambda frames (FORMATS.md rule 6).
  inline = [t for t in traces if any(f.event == "call" and not f.source_line.lstrip()
                                     .startswith("def ") for f in t.frames)]
  assert 10 <= len(inline) <= 30
  summary, rows = cruxeval.evaluate_output_via_trace(trace_oracle(tokenizer, traces), problems,
                                                     max_new_tokens=1 << 20)
  assert summary["accuracy"] == 1.0 and summary["problems"] == 200
  assert [r["answer"] for r in rows] == [p.output for p in problems]

  def cut(context, rest):  # no <|end_of_text|>: the generation ran out of tokens
    return rest[:-len("<|end_of_text|>")]

  summary, _ = cruxeval.evaluate_output_via_trace(
      trace_oracle(tokenizer, traces, corrupt_full=cut), problems[:10])
  assert summary["reasons"] == {"no_answer": 10}
