"""Trace text or token ids -> `Trace`, validating the grammar of FORMATS.md.

  trace  := BOS TRACE_CONTEXT_START CONTEXT FRAME_SEP frame* EOS
  frame  := (CALL_SEP | LINE_SEP) LOCALS ACTION_SEP SOURCE_LINE FRAME_SEP
          | (RETURN_SEP | EXCEPTION_SEP) ACTION_SEP SOURCE_LINE ARG_SEP VALUE FRAME_SEP

`".."` in LOCALS is resolved against the baseline: the previous call/line frame, unless
a call or return frame came in between (then `".."` is an error, as it is in a call
frame). `strict` (the default) also requires the canonical encoding, so that
`format_trace(parse_trace(text)) == text`: JSON written exactly as `json.dumps` writes
it, `".."` wherever a value equals the baseline's, no repr holding a memory address
(` at 0x..`, rule 7), and every SOURCE_LINE one line of CONTEXT ending with "\\n".
Errors name the frame and the character (text) or token (ids) position.

Text is ambiguous when CONTEXT or a value contains a structural token string such as
"<|frame_sep|>"; token ids are not (there such strings are text), so parse ids when
you have them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer.base import Tokenizer
from data_pipelines.traces import tracer_program as tp
from data_pipelines.traces.frames import FRAME_TYPES, Frame, Trace

_STRUCTURAL = (st.BOS, st.EOS, st.TRACE_CONTEXT_START, st.FRAME_SEP, st.ACTION_SEP, st.ARG_SEP,
               st.CALL_SEP, st.LINE_SEP, st.RETURN_SEP, st.EXCEPTION_SEP)
_STRUCTURAL_RE = re.compile("|".join(re.escape(t) for t in _STRUCTURAL))
_EVENT_OF_SEP = {sep: event for event, sep in tp.EVENT_SEP.items()}


class TraceParseError(ValueError):
  """A malformed trace; `position` is a character offset (text) or token index (ids)."""

  def __init__(self, message: str, position: int | None = None, frame: int | None = None):
    super().__init__(message)
    self.position, self.frame = position, frame


class _Incomplete(Exception):
  """The items ended inside a frame (allowed with partial=True)."""


# An item is (special-token string or None for text, text, position).
_Item = tuple


def _text_items(text: str) -> list[_Item]:
  items, start = [], 0
  for m in _STRUCTURAL_RE.finditer(text):
    if m.start() > start:
      items.append((None, text[start:m.start()], start))
    items.append((m.group(), m.group(), m.start()))
    start = m.end()
  if start < len(text):
    items.append((None, text[start:], start))
  return items


def _id_items(ids: Sequence[int], tokenizer: Tokenizer) -> list[_Item]:
  structural = {tokenizer.special_ids[t]: t for t in _STRUCTURAL}
  items, run_start = [], None
  ids = [int(i) for i in ids]

  def flush(end):
    if run_start is not None:
      items.append((None, tokenizer.decode(ids[run_start:end]), run_start))

  for k, i in enumerate(ids):
    if i in structural:
      flush(k)
      run_start = None
      items.append((structural[i], structural[i], k))
    elif tokenizer.is_special(i):
      raise TraceParseError(f"unexpected special token {tokenizer.decode([i])} (id {i}) at token "
                            f"{k}: only the trace tokens {', '.join(_STRUCTURAL)} may appear", k)
    elif run_start is None:
      run_start = k
  flush(len(ids))
  return items


class _Parser:

  def __init__(self, items: list[_Item], unit: str, partial: bool, strict: bool):
    self.items, self.unit, self.partial, self.strict = items, unit, partial, strict
    self.k = 0
    self.frame_index = None

  def error(self, message: str, position: int | None = None):
    if position is None:
      position = self.items[self.k][2] if self.k < len(self.items) else None
    where = f"{self.unit} {position}" if position is not None else "the end"
    prefix = f"frame {self.frame_index} " if self.frame_index is not None else ""
    raise TraceParseError(f"trace {prefix}at {where}: {message}", position, self.frame_index)

  def describe(self) -> str:
    if self.k >= len(self.items):
      return "the end of the trace"
    kind, text, _ = self.items[self.k]
    return kind if kind is not None else f"text {text[:40]!r}"

  def expect(self, token: str):
    if self.k >= len(self.items):
      if self.partial and self.frame_index is not None:
        raise _Incomplete()
      self.error(f"expected {token}, got the end of the trace")
    if self.items[self.k][0] != token:
      self.error(f"expected {token}, got {self.describe()}")
    self.k += 1

  def text(self) -> tuple[str, int]:
    """The text item here ("" when absent) and its position."""
    if self.k < len(self.items) and self.items[self.k][0] is None:
      _, text, pos = self.items[self.k]
      self.k += 1
      if self.k == len(self.items) and self.partial and self.frame_index is not None:
        raise _Incomplete()  # text is always followed by a token: this piece may be cut off
      return text, pos
    if self.k >= len(self.items) and self.partial and self.frame_index is not None:
      raise _Incomplete()
    return "", self.items[self.k][2] if self.k < len(self.items) else None

  def parse(self) -> Trace:
    self.expect(st.BOS)
    self.expect(st.TRACE_CONTEXT_START)
    context, _ = self.text()
    self.expect(st.FRAME_SEP)
    self.lines = {tp.source_line([l], 1) for l in tp.context_lines(context)}
    frames: list[Frame] = []
    baseline = None
    ended = False
    while self.k < len(self.items):
      if self.items[self.k][0] == st.EOS:
        self.k += 1
        if self.k < len(self.items):
          self.error(f"unexpected {self.describe()} after {st.EOS}")
        ended = True
        break
      self.frame_index = len(frames)
      try:
        frame = self.frame(baseline)
      except _Incomplete:
        break
      if frame.event in ("call", "line"):
        baseline = frame.locals
      elif frame.event == "return":
        baseline = None
      frames.append(frame)
    self.frame_index = None
    if not ended and not self.partial:
      self.error(f"missing {st.EOS} (pass partial=True to accept an unfinished trace)")
    return Trace(context, tuple(frames), ended)

  def frame(self, baseline) -> Frame:
    if self.k >= len(self.items) or self.items[self.k][0] not in _EVENT_OF_SEP:
      self.error(f"expected a frame {st.CALL_SEP}, {st.LINE_SEP}, {st.RETURN_SEP} or "
                 f"{st.EXCEPTION_SEP}, or {st.EOS}, got {self.describe()}")
    event = _EVENT_OF_SEP[self.items[self.k][0]]
    self.k += 1
    if event in ("call", "line"):
      payload, pos = self.text()
      self.expect(st.ACTION_SEP)
      line = self.source_line()
      self.expect(st.FRAME_SEP)
      return FRAME_TYPES[event](self.locals(event, payload, pos, baseline), line)
    self.expect(st.ACTION_SEP)
    line = self.source_line()
    self.expect(st.ARG_SEP)
    payload, pos = self.text()
    self.expect(st.FRAME_SEP)
    return FRAME_TYPES[event](line, self.value(payload, pos))

  def source_line(self) -> str:
    line, pos = self.text()
    if self.strict:
      if not line.endswith("\n") or "\n" in line[:-1]:
        self.error(f"SOURCE_LINE must be one line ending with a newline, got {line[:60]!r}", pos)
      if line not in self.lines:
        self.error(f"SOURCE_LINE {line[:60]!r} is not a line of CONTEXT", pos)
    return line

  def locals(self, event, payload, pos, baseline) -> dict[str, str]:
    def pairs_hook(pairs):
      keys = [k for k, _ in pairs]
      if len(set(keys)) != len(keys):
        self.error(f"LOCALS has a repeated name: {payload[:60]!r}", pos)
      return dict(pairs)

    try:
      written = json.loads(payload, object_pairs_hook=pairs_hook)
    except ValueError as e:
      if isinstance(e, TraceParseError):
        raise
      self.error(f"LOCALS is not valid JSON ({e}): {payload[:60]!r}", pos)
    if not isinstance(written, dict) or not all(isinstance(v, str) for v in written.values()):
      self.error(f"LOCALS must be a JSON object of strings, got {payload[:60]!r}", pos)
    if event == "call":
      baseline = None
    resolved = {}
    for name, value in written.items():
      if value == tp.DOTS:
        if event == "call":
          self.error(f"{name!r} is {tp.DOTS!r} in a call frame, which always shows full values",
                     pos)
        if baseline is None:
          self.error(f"{name!r} is {tp.DOTS!r} but the frame has no baseline (a call or return "
                     "frame came since the last line frame)", pos)
        if name not in baseline:
          self.error(f"{name!r} is {tp.DOTS!r} but the baseline frame has no local {name!r}", pos)
        value = baseline[name]
      resolved[name] = value
    if self.strict:
      for name, value in written.items():
        self.check_no_address(f"local {name!r}", value, pos)
      canonical = tp.encode_locals(list(resolved.items()), baseline)
      if canonical != payload:
        self.error(f"LOCALS is not in canonical form: got {payload[:80]!r}, expected "
                   f"{canonical[:80]!r}", pos)
    return resolved

  def value(self, payload, pos) -> str:
    try:
      value = json.loads(payload)
    except ValueError as e:
      self.error(f"VALUE is not valid JSON ({e}): {payload[:60]!r}", pos)
    if not isinstance(value, str):
      self.error(f"VALUE must be a JSON string (a repr), got {payload[:60]!r}", pos)
    if self.strict and tp.encode_value(value) != payload:
      self.error(f"VALUE is not in canonical form: got {payload[:80]!r}", pos)
    if self.strict:
      self.check_no_address("VALUE", value, pos)
    return value

  def check_no_address(self, what: str, value: str, pos):
    if tp.has_address(value):
      self.error(f"{what} {value[:60]!r} holds a memory address ' at 0x...', which FORMATS.md "
                 "rule 7 removes", pos)


def parse_trace(text: str, *, partial: bool = False, strict: bool = True) -> Trace:
  """Trace text (prompt, frames, <|end_of_text|>) -> Trace.

  With `partial`, the text may stop anywhere after the prompt (a model's unfinished
  output): an incomplete last frame is dropped and the trace has `ended=False`.
  """
  if not isinstance(text, str):
    raise TypeError(f"parse_trace expects str, got {type(text).__name__}")
  return _Parser(_text_items(text), "character", partial, strict).parse()


def parse_trace_ids(ids: Sequence[int], tokenizer: Tokenizer, *, partial: bool = False,
                    strict: bool = True) -> Trace:
  """Token ids (as `encode_trace` writes them) -> Trace; see `parse_trace`."""
  return _Parser(_id_items(ids, tokenizer), "token", partial, strict).parse()


def parse_items(items: list[_Item], *, strict: bool = True) -> Trace:
  """Parses an item stream (special-token string or None, text, position); used to read
  the tracer's output through the same validation."""
  return _Parser(items, "item", False, strict).parse()
