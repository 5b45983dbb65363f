"""Trace-prediction metrics (TRAINING.md, "Evaluations"), greedy, on any list of true traces.

A true trace comes from the real tracer (data_pipelines.traces); each metric compares
the model's text with the canonical text of that trace (format.py). Frame k is
the k-th event frame; its *state* is the observation (call/line: the LOCALS JSON
text, diff-encoded as FORMATS.md rule 4 writes it; return/exception: the VALUE
text) and its *action* is SOURCE_LINE.

Full generation (one greedy completion per trace, prompt =
`encode_trace_prompt(context)`, stopped at <|end_of_text|> or max_new_tokens):
- output accuracy: the generated trace's final return value equals the true one.
  The final return value is the VALUE of the last frame before the first
  <|end_of_text|>, when that frame is a return frame (its JSON string decoded to
  the repr); anything else, or no <|end_of_text|>, is no answer. Compared as repr
  text, exactly (CruxEval-O via traces instead executes `assert output == value`;
  see cruxeval.py).
- valid trace format: prompt + completion (through <|end_of_text|>) parses with the
  strict parser (parse.py): a complete trace in canonical form whose every
  SOURCE_LINE is a line of CONTEXT; and it is the trace of one call of the entry
  function: it starts with a call frame, calls and returns nest (depth never below
  zero) and the last frame is the return that brings the depth back to zero (an
  immediate <|end_of_text|> parses, but is no trace).

Teacher-forced next frame (for frames k = 0..len-1, or a seeded sample of
`frames_per_trace` of them): prompt = the prompt plus the true frames < k (token
ids as `encode_trace` writes them), one greedy frame is generated (stopped at
<|frame_sep|> or <|end_of_text|>, or max_frame_tokens) and split into event,
LOCALS, SOURCE_LINE and VALUE at its trace tokens. Over all such frames:
- state exact match: same event and the state text is identical to the true one;
- action exact match: the SOURCE_LINE text is identical to the true one.
Over the frames whose true event is call or line (the frames with a state JSON):
- valid JSON: the generated LOCALS parses as a JSON object of strings (a frame
  with no LOCALS piece, e.g. a return frame where a line was due, is invalid);
- key match: valid, and its set of names equals the true set of local names;
- key+value match: valid, and after resolving ".." against the true baseline
  (the previous true call/line frame when rule 4 gives one) the name -> repr map
  equals the true one (order ignored; ".." without a baseline value is wrong).
All rates are micro averages in [0, 1] over traces (output, format) or frames.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence

from cwm_jax.evals.model import Completer, complete_checked
from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer.formats import encode_trace_prompt, format_trace_prompt
from data_pipelines.traces import tracer_program as tp
from data_pipelines.traces.format import encode_trace_with_mask, frame_pieces
from data_pipelines.traces.frames import CallFrame, LineFrame, ReturnFrame, Trace
from data_pipelines.traces.parse import TraceParseError, parse_trace

_EVENT_OF_SEP = {sep: event for event, sep in tp.EVENT_SEP.items()}
STATE_EVENTS = ("call", "line")
FRAME_METRICS = ("state_exact_match", "action_exact_match")
STATE_METRICS = ("valid_json", "key_match", "key_value_match")


@dataclasses.dataclass(frozen=True)
class FrameParts:
  """One frame's text split at its trace tokens; a piece that is absent is None."""
  event: str | None
  locals_text: str | None = None
  action: str | None = None
  value_text: str | None = None
  complete: bool = False  # ended with <|frame_sep|>


def split_frame(text: str) -> FrameParts:
  """Splits `EVENT_SEP [LOCALS] ACTION_SEP LINE [ARG_SEP VALUE] FRAME_SEP` (lenient: a
  piece that cannot be found is None)."""
  sep = next((s for s in _EVENT_OF_SEP if text.startswith(s)), None)
  if sep is None:
    return FrameParts(None)
  event, rest = _EVENT_OF_SEP[sep], text[len(sep):]
  end = rest.find(st.FRAME_SEP)
  complete = end != -1
  body = rest[:end] if complete else rest
  if event in STATE_EVENTS:
    if st.ACTION_SEP not in body:
      return FrameParts(event, complete=complete)
    locals_text, action = body.split(st.ACTION_SEP, 1)
    return FrameParts(event, locals_text, action if complete else None, complete=complete)
  if not body.startswith(st.ACTION_SEP) or st.ARG_SEP not in body:
    return FrameParts(event, complete=complete)
  action, value = body[len(st.ACTION_SEP):].split(st.ARG_SEP, 1)
  return FrameParts(event, action=action, value_text=value if complete else None,
                    complete=complete)


def through_eos(completion: str) -> str:
  """The completion up to and including its first <|end_of_text|> (all of it if none)."""
  i = completion.find(st.EOS)
  return completion if i == -1 else completion[:i + len(st.EOS)]


def final_return_value(completion: str) -> str | None:
  """repr of the final return value of a generated trace (see the module docstring)."""
  i = completion.find(st.EOS)
  if i == -1 or not completion[:i].endswith(st.FRAME_SEP):
    return None
  last = completion[:i - len(st.FRAME_SEP)].rsplit(st.FRAME_SEP, 1)[-1] + st.FRAME_SEP
  parts = split_frame(last)
  if parts.event != "return" or parts.value_text is None:
    return None
  try:
    value = json.loads(parts.value_text)
  except ValueError:
    return None
  return value if isinstance(value, str) else None


def structure_error(trace: Trace) -> str:
  """Why a parsed trace is not one call of the entry function ("" when it is)."""
  if not trace.frames or not isinstance(trace.frames[0], CallFrame):
    return "the trace does not start with a call frame"
  depth = 0
  for i, frame in enumerate(trace.frames):
    if isinstance(frame, CallFrame):
      depth += 1
    elif isinstance(frame, ReturnFrame):
      depth -= 1
      if depth < 0:
        return f"frame {i}: a return without a matching call"
      if depth == 0 and i != len(trace.frames) - 1:
        return f"frame {i}: the entry function returned before the trace ends"
  if depth != 0 or not isinstance(trace.frames[-1], ReturnFrame):
    return "the trace ends before the entry function returns"
  return ""


def baselines(frames) -> list[dict[str, str] | None]:
  """Per frame, the locals its `".."` refer to (rule 4); None where there is none."""
  out, baseline = [], None
  for frame in frames:
    if isinstance(frame, (CallFrame, LineFrame)):
      out.append(baseline if isinstance(frame, LineFrame) else None)
      baseline = frame.locals
    else:
      out.append(None)
      if isinstance(frame, ReturnFrame):
        baseline = None
  return out


def _json_locals(text: str | None) -> dict[str, str] | None:
  if text is None:
    return None
  try:
    value = json.loads(text)
  except ValueError:
    return None
  if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
    return value
  return None


def score_frame(generated: str, true_pieces: tuple, true_locals: dict[str, str] | None,
                baseline: dict[str, str] | None) -> dict:
  """Metrics of one teacher-forced frame (module docstring); STATE_METRICS are None for a
  true return/exception frame."""
  parts = split_frame(generated)
  true_event = _EVENT_OF_SEP[true_pieces[0][1]]
  if true_event in STATE_EVENTS:
    true_state, true_action = true_pieces[1][1], true_pieces[3][1]
    gen_state = parts.locals_text
  else:
    true_state, true_action = true_pieces[4][1], true_pieces[2][1]
    gen_state = parts.value_text
  row = {"event": true_event,
         "state_exact_match": parts.event == true_event and gen_state == true_state,
         "action_exact_match": parts.action == true_action,
         "valid_json": None, "key_match": None, "key_value_match": None}
  if true_event in STATE_EVENTS:
    written = _json_locals(parts.locals_text)
    row["valid_json"] = written is not None
    row["key_match"] = written is not None and set(written) == set(true_locals)
    resolved = None
    if written is not None:
      resolved = {}
      for name, value in written.items():
        if value == tp.DOTS:
          if baseline is None or name not in baseline:
            resolved = None
            break
          value = baseline[name]
        resolved[name] = value
    row["key_value_match"] = resolved is not None and resolved == true_locals
  return row


@dataclasses.dataclass(frozen=True)
class TraceEvalConfig:
  """Generation budgets and which parts to run; frames_per_trace None = every frame."""
  max_new_tokens: int = 4096
  max_frame_tokens: int = 512
  frames_per_trace: int | None = None
  full_generation: bool = True
  teacher_forced: bool = True
  seed: int = 0

  def __post_init__(self):
    for name in ("max_new_tokens", "max_frame_tokens"):
      v = getattr(self, name)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"TraceEvalConfig.{name}={v!r}; expected a positive int")
    if self.frames_per_trace is not None and (not isinstance(self.frames_per_trace, int) or
                                              self.frames_per_trace < 1):
      raise ValueError(f"TraceEvalConfig.frames_per_trace={self.frames_per_trace!r}; expected "
                       "a positive int or None (every frame)")
    if not (self.full_generation or self.teacher_forced):
      raise ValueError("TraceEvalConfig: full_generation and teacher_forced are both off; "
                       "nothing to evaluate")


def _frame_indices(n_frames: int, config: TraceEvalConfig, trace_index: int) -> list[int]:
  if config.frames_per_trace is None or config.frames_per_trace >= n_frames:
    return list(range(n_frames))
  rng = random.Random(f"cwm-trace-eval:{config.seed}:{trace_index}")
  return sorted(rng.sample(range(n_frames), config.frames_per_trace))


def _rate(values: list[bool]) -> float | None:
  return sum(values) / len(values) if values else None


def evaluate_traces(completer: Completer, traces: Sequence[Trace], *,
                    config: TraceEvalConfig = TraceEvalConfig(),
                    ids: Sequence[str] | None = None, max_new_tokens: int | None = None
                    ) -> tuple[dict, list[dict]]:
  """Trace-prediction metrics of `completer` on true `traces` (module docstring).

  Returns (summary, rows): rates in [0, 1] and their denominators, and one row per
  trace with its generation and per-frame results. `max_new_tokens` overrides
  config.max_new_tokens (the quickstart's one knob).
  """
  if max_new_tokens is not None:
    config = dataclasses.replace(config, max_new_tokens=max_new_tokens)
  traces = list(traces)
  ids = [str(i) for i in (ids if ids is not None else range(len(traces)))]
  if len(ids) != len(traces):
    raise ValueError(f"evaluate_traces: {len(ids)} ids for {len(traces)} traces")
  for i, trace in enumerate(traces):
    if not isinstance(trace, Trace) or not trace.ended:
      raise ValueError(f"evaluate_traces: trace {ids[i]} must be a complete Trace from the tracer")
  tok = completer.tokenizer
  rows = [{"id": i, "expected_output": t.return_value} for i, t in zip(ids, traces)]

  if config.full_generation:
    prompts = [encode_trace_prompt(tok, t.context) for t in traces]
    outs = complete_checked(completer, prompts, n=1, max_new_tokens=config.max_new_tokens,
                            temperature=0.0)
    for row, trace, (completion,) in zip(rows, traces, outs):
      text = format_trace_prompt(trace.context) + through_eos(completion)
      try:
        error = structure_error(parse_trace(text))
      except TraceParseError as e:
        error = str(e)[:300]
      row["valid_format"], row["format_error"] = not error, error
      row["output"] = final_return_value(completion)
      row["output_correct"] = row["output"] is not None and row["output"] == trace.return_value
      row["completion"] = completion

  if config.teacher_forced:
    stop_ids = (tok.special_ids[st.FRAME_SEP], tok.special_ids[st.EOS])
    jobs, prompts = [], []
    for t, trace in enumerate(traces):
      pieces = list(frame_pieces(trace.frames))
      bases = baselines(trace.frames)
      for k in _frame_indices(len(trace.frames), config, t):
        frame = trace.frames[k]
        true_locals = frame.locals if isinstance(frame, (CallFrame, LineFrame)) else None
        jobs.append((t, k, pieces[k], true_locals, bases[k]))
        prompts.append(encode_trace_with_mask(
            tok, Trace(trace.context, trace.frames[:k], ended=False))[0])
    outs = complete_checked(completer, prompts, n=1, max_new_tokens=config.max_frame_tokens,
                            temperature=0.0, stop_token_ids=stop_ids)
    for row in rows:
      row["frames"] = []
    for (t, k, pieces, true_locals, base), (generated,) in zip(jobs, outs):
      rows[t]["frames"].append({"k": k, **score_frame(generated, pieces, true_locals, base),
                                "generated": generated})
  return summarize(rows, config), rows


def summarize(rows: Sequence[dict], config: TraceEvalConfig) -> dict:
  """The summary rates of `evaluate_traces` rows."""
  summary: dict = {"traces": len(rows)}
  if config.full_generation:
    summary["output_accuracy"] = _rate([r["output_correct"] for r in rows])
    summary["valid_format"] = _rate([r["valid_format"] for r in rows])
  if config.teacher_forced:
    frames = [f for r in rows for f in r["frames"]]
    state = [f for f in frames if f["valid_json"] is not None]
    summary["frames"], summary["state_frames"] = len(frames), len(state)
    for name in FRAME_METRICS:
      summary[name] = _rate([f[name] for f in frames])
    for name in STATE_METRICS:
      summary[name] = _rate([f[name] for f in state])
  return summary
