"""Trace-prediction metrics on real traces from the sandboxed tracer (CruxEval dev records
and generated programs): a model replaying the true traces scores exactly 1.0 on every
metric; a model that corrupts known frames scores exactly the rates those corruptions
imply."""

import json

import pytest

from cwm_jax.evals import trace_metrics as tm
from cwm_jax.evals.data import load_cruxeval
from cwm_jax.tokenizer import special_tokens as st
from data_pipelines.programs.generate import generate_programs
from data_pipelines.traces import executors
from data_pipelines.traces.sources import cruxeval_requests
from data_pipelines.traces.trace import trace_requests

from tests.evals.conftest import dev_file

ALL = ("output_accuracy", "valid_format", "state_exact_match", "action_exact_match",
       "valid_json", "key_match", "key_value_match")


@pytest.fixture(scope="module")
def traces(need_sandbox):
  crux = [{"id": p.id, "code": p.code, "input": p.input}
          for p in load_cruxeval(dev_file("cruxeval_dev.jsonl"))[:25]]
  synthetic = list(generate_programs(seed=7, n=25))
  results = trace_requests(cruxeval_requests(crux + synthetic),
                           executor=executors.sandbox_executor, batch_size=25, num_workers=2)
  ok = [r.trace for r in results if r.ok and len(r.trace.frames) <= 120]
  assert len([r for r in results[:25] if r.ok]) == 25  # every CruxEval record traces
  assert len(ok) >= 30
  # Comprehension/generator-expression frames (FORMATS.md rule 6) are among them.
  assert sum(any(f.event == "call" and ".0" in f.locals for f in t.frames) for t in ok) >= 3
  return ok


def test_perfect_replay_scores_one_on_every_metric(traces, tokenizer, trace_oracle):
  summary, rows = tm.evaluate_traces(trace_oracle(tokenizer, traces), traces,
                                     max_new_tokens=100_000)
  assert {k: summary[k] for k in ALL} == {k: 1.0 for k in ALL}
  assert summary["frames"] == sum(len(t.frames) for t in traces)
  assert summary["state_frames"] == sum(f.event in ("call", "line") for t in traces
                                        for f in t.frames)
  assert [r["output"] for r in rows] == [t.return_value for t in traces]


def _split(text):
  """(event sep, locals, line, value) of a frame text; None for absent pieces."""
  sep = next(s for s in (st.CALL_SEP, st.LINE_SEP, st.RETURN_SEP, st.EXCEPTION_SEP)
             if text.startswith(s))
  rest = text[len(sep):-len(st.FRAME_SEP)]
  if sep in (st.CALL_SEP, st.LINE_SEP):
    loc, line = rest.split(st.ACTION_SEP)
    return sep, loc, line, None
  line, value = rest[len(st.ACTION_SEP):].split(st.ARG_SEP)
  return sep, None, line, value


def _join(sep, loc, line, value):
  if loc is not None:
    return sep + loc + st.ACTION_SEP + line + st.FRAME_SEP
  return sep + st.ACTION_SEP + line + st.ARG_SEP + value + st.FRAME_SEP


# Each corruption's effect: the metrics it makes wrong.
EFFECTS = {
    "expand": {"state_exact_match"},  # ".." written out in full: same state, not canonical
    "value": {"state_exact_match", "key_value_match"},
    "drop": {"state_exact_match", "key_match", "key_value_match"},
    "badjson": {"state_exact_match", "valid_json", "key_match", "key_value_match"},
    "action": {"action_exact_match"},
    "retval": {"state_exact_match"},
}


class Corrupter:
  """Corrupts frame k of trace i by kind KINDS[(k + i) % 6] where that kind applies; records what it did."""
  KINDS = ("expand", "value", "drop", "badjson", "action", "retval")

  def __init__(self, traces):
    self.by_context = {t.context: t for t in traces}
    self.index = {t.context: i for i, t in enumerate(traces)}
    self.applied = {}

  def __call__(self, context, k, text):
    sep, loc, line, value = _split(text)
    kind = self.KINDS[(k + self.index[context]) % 6]
    true_locals = getattr(self.by_context[context].frames[k], "locals", None)
    written = json.loads(loc) if loc is not None else None
    if kind == "expand" and written and tm.tp.DOTS in written.values():
      loc = json.dumps(true_locals)
    elif kind == "value" and written and any(v != tm.tp.DOTS for v in written.values()):
      name = next(n for n, v in written.items() if v != tm.tp.DOTS)
      loc = json.dumps({**written, name: written[name] + " "})
    elif kind == "drop" and written:
      loc = json.dumps(dict(list(written.items())[:-1]))
    elif kind == "badjson" and loc is not None:
      loc = loc[:-1]
    elif kind == "action":
      line = "    pass  # not a line of the context\n"
    elif kind == "retval" and sep == st.RETURN_SEP:
      value = json.dumps(json.loads(value) + "!")
    else:
      return text
    self.applied[(context, k)] = kind
    return _join(sep, loc, line, value)


def corrupt_full_by_index(traces):
  index = {t.context: i for i, t in enumerate(traces)}

  def corrupt(context, rest):
    i = index[context]
    if i % 3 == 1:  # change the final return value (still a canonical trace)
      body = rest[:-len(st.FRAME_SEP + st.EOS)]
      head, value = body.rsplit(st.ARG_SEP, 1)
      return head + st.ARG_SEP + json.dumps(json.loads(value) + "0") + st.FRAME_SEP + st.EOS
    if i % 3 == 2:  # stop before <|end_of_text|>: no answer, not a complete trace
      return rest[:-len(st.EOS)]
    return rest
  return corrupt


def test_corrupted_predictions_score_exactly_the_implied_rates(traces, tokenizer, trace_oracle):
  corrupter = Corrupter(traces)
  model = trace_oracle(tokenizer, traces, corrupt_frame=corrupter,
                       corrupt_full=corrupt_full_by_index(traces))
  summary, _ = tm.evaluate_traces(model, traces, max_new_tokens=100_000)

  n = len(traces)
  assert summary["output_accuracy"] == sum(i % 3 == 0 for i in range(n)) / n
  assert summary["valid_format"] == sum(i % 3 != 2 for i in range(n)) / n
  frames = [(t.context, k, f.event) for t in traces for k, f in enumerate(t.frames)]
  state_frames = [x for x in frames if x[2] in ("call", "line")]
  wrong = {name: 0 for name in ALL}
  for context, k, event in frames:
    for name in EFFECTS.get(corrupter.applied.get((context, k)), ()):
      if name in ("state_exact_match", "action_exact_match") or event in ("call", "line"):
        wrong[name] += 1
  assert set(corrupter.applied.values()) == set(EFFECTS)
  for name in ("state_exact_match", "action_exact_match"):
    assert summary[name] == (len(frames) - wrong[name]) / len(frames), name
  for name in ("valid_json", "key_match", "key_value_match"):
    assert summary[name] == (len(state_frames) - wrong[name]) / len(state_frames), name
  assert summary["state_exact_match"] < summary["key_value_match"] < 1.0


def test_frames_per_trace_samples_a_seeded_subset(traces, tokenizer, trace_oracle):
  config = tm.TraceEvalConfig(frames_per_trace=3, full_generation=False, seed=1)
  summary, rows = tm.evaluate_traces(trace_oracle(tokenizer, traces), traces, config=config)
  assert summary["frames"] == sum(min(3, len(t.frames)) for t in traces)
  again = tm.evaluate_traces(trace_oracle(tokenizer, traces), traces, config=config)[1]
  assert [[f["k"] for f in r["frames"]] for r in rows] == [[f["k"] for f in r["frames"]]
                                                           for r in again]
  assert summary["key_value_match"] == 1.0 and "output_accuracy" not in summary


@pytest.mark.parametrize("completion, expected", [
    (st.RETURN_SEP + st.ACTION_SEP + "  return x\n" + st.ARG_SEP + '"[1, 2]"' + st.FRAME_SEP +
     st.EOS, "[1, 2]"),
    (st.RETURN_SEP + st.ACTION_SEP + "  return x\n" + st.ARG_SEP + '"3"' + st.FRAME_SEP, None),
    (st.LINE_SEP + "{}" + st.ACTION_SEP + "  x = 1\n" + st.FRAME_SEP + st.EOS, None),
    (st.RETURN_SEP + st.ACTION_SEP + "  return x\n" + st.ARG_SEP + "3" + st.FRAME_SEP + st.EOS,
     None),  # VALUE must be a JSON string
    ("garbage" + st.EOS, None),
])
def test_final_return_value(completion, expected):
  assert tm.final_return_value(completion) == expected


@pytest.mark.parametrize("cut", ["empty", "after_first_frame", "early_return"])
def test_incomplete_or_unbalanced_traces_are_not_valid_format(traces, tokenizer, cut):
  """Texts that parse but are not one call of the entry function: an immediate
  <|end_of_text|>, a trace stopped after its first frame, the entry's return moved up."""
  from data_pipelines.traces.format import format_frames
  from data_pipelines.traces.frames import ReturnFrame, Trace

  class Fixed:
    def __init__(self, texts):
      self.texts, self.tokenizer = texts, tokenizer

    def complete(self, prompts, *, n=1, **kw):
      return [[t] * n for t in self.texts[:len(prompts)]]

  picked = [t for t in traces if len(t.frames) >= 4][:5]
  texts = []
  for t in picked:
    if cut == "empty":
      frames = ()
    elif cut == "after_first_frame":
      frames = t.frames[:1]
    else:  # the final return right after the call: nothing wrong in the text's syntax
      frames = (t.frames[0], t.frames[-1]) + tuple(t.frames[1:-1])
    texts.append(format_frames(frames) + st.EOS)
  summary, rows = tm.evaluate_traces(Fixed(texts), picked, config=tm.TraceEvalConfig(
      teacher_forced=False, max_new_tokens=10_000))
  assert summary["valid_format"] == 0.0, [r["format_error"] for r in rows]
  assert all(r["format_error"] for r in rows)
