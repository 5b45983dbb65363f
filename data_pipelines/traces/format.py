"""Frames -> trace text and token ids (FORMATS.md, "Execution traces").

Text: `<|begin_of_text|><|trace_context_start|>CONTEXT<|frame_sep|>`, one frame per
event (comprehension, generator-expression and lambda frames included, rule 6), then `<|end_of_text|>` when the trace ended. LOCALS are diff-encoded here
(rule 4): a call/line frame's baseline is the previous call/line frame unless a
call or return frame came in between (exception frames do not count). This is the
tracer's rule seen from the frame sequence: the tracer emits a call or return frame
whenever execution moves to another invocation.

Ids: structural tokens are special ids; CONTEXT, LOCALS, SOURCE_LINE and VALUE are
encoded as text (special-token strings inside them stay text), each piece on its own,
as the special tokens split them anyway.

Reprs holding a memory address (` at 0x7f..`) are refused: rule 7 removes them, so no
canonical trace has one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer.base import Tokenizer
from cwm_jax.tokenizer.formats import encode_trace_prompt, format_trace_prompt
from data_pipelines.traces import tracer_program as tp
from data_pipelines.traces.frames import CallFrame, Frame, LineFrame, ReturnFrame, Trace


def frame_pieces(frames: Sequence[Frame]) -> Iterator[tuple[tuple[bool, str], ...]]:
  """Per frame, its pieces in order as (is_special, text).

  Call/line frames: EVENT_SEP, LOCALS, ACTION_SEP, SOURCE_LINE, FRAME_SEP; return/
  exception frames: EVENT_SEP, ACTION_SEP, SOURCE_LINE, ARG_SEP, VALUE, FRAME_SEP.
  """
  baseline = None
  for i, frame in enumerate(frames):
    if isinstance(frame, (CallFrame, LineFrame)):
      base = baseline if isinstance(frame, LineFrame) else None
      items = list(frame.locals.items())
      if any(v == tp.DOTS for _, v in items):
        raise ValueError(f"frame {i}: a local's repr is {tp.DOTS!r}, which the diff encoding "
                         "cannot represent")
      for name, value in items:
        _check_no_address(i, f"local {name!r}", value)
      baseline = frame.locals
      yield ((True, tp.EVENT_SEP[frame.event]), (False, tp.encode_locals(items, base)),
             (True, st.ACTION_SEP), (False, frame.source_line), (True, st.FRAME_SEP))
    else:
      if isinstance(frame, ReturnFrame):
        baseline = None
      _check_no_address(i, "value", frame.value)
      yield ((True, tp.EVENT_SEP[frame.event]), (True, st.ACTION_SEP), (False, frame.source_line),
             (True, st.ARG_SEP), (False, tp.encode_value(frame.value)), (True, st.FRAME_SEP))


def _check_no_address(i: int, what: str, text: str) -> None:
  if tp.has_address(text):
    raise ValueError(f"frame {i}: {what} {text[:80]!r} holds a memory address ' at 0x...', "
                     "which FORMATS.md rule 7 removes (tracer_program.mask_addresses)")


def _text(pieces) -> str:
  return "".join(text for _, text in pieces)


def format_frames(frames: Sequence[Frame]) -> str:
  """The frames as trace text (no prompt, no <|end_of_text|>)."""
  return "".join(_text(pieces) for pieces in frame_pieces(frames))


def format_trace(trace: Trace) -> str:
  """Prompt + frames (+ <|end_of_text|> if the trace ended): the canonical trace text."""
  return (format_trace_prompt(trace.context) + format_frames(trace.frames) +
          (st.EOS if trace.ended else ""))


def format_trace_readable(trace: Trace) -> str:
  """One frame per line with newlines written as `\\n`, as FORMATS.md displays traces."""
  lines = [format_trace_prompt(trace.context)]
  lines += [_text(p).replace("\n", "\\n") for p in frame_pieces(trace.frames)]
  if trace.ended:
    lines.append(st.EOS)
  return "\n".join(lines) + "\n"


def encode_trace_with_mask(tokenizer: Tokenizer, trace: Trace, *, train_on_context: bool = False
                           ) -> tuple[list[int], list[int]]:
  """Ids of `format_trace(trace)` and a loss mask (1 = train on this token).

  The mask is 1 on the frames and <|end_of_text|>, and also on the prompt after BOS
  when `train_on_context` (FORMATS.md: the context can be masked or not).
  """
  sp = tokenizer.special_ids
  ids = encode_trace_prompt(tokenizer, trace.context)
  mask = [0] + [int(train_on_context)] * (len(ids) - 1)
  for pieces in frame_pieces(trace.frames):
    for is_special, text in pieces:
      piece_ids = [sp[text]] if is_special else tokenizer.encode(text)
      ids += piece_ids
      mask += [1] * len(piece_ids)
  if trace.ended:
    ids.append(sp[st.EOS])
    mask.append(1)
  return ids, mask


def encode_trace(tokenizer: Tokenizer, trace: Trace) -> list[int]:
  """Ids of `format_trace(trace)`: structural tokens as special ids, the rest as text."""
  return encode_trace_with_mask(tokenizer, trace)[0]

