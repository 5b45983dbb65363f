"""Typed trace frames and `Trace`, the in-memory form of an execution trace (FORMATS.md).

Frames hold *resolved* values: `locals` maps every local name to its full repr, even
where the text writes `".."` (the diff encoding lives in format.py and parse.py
only). `source_line` is SOURCE_LINE as written, ending with "\\n". `lineno` is known
when the frame comes from the tracer and None when it was parsed from text (the text
has no line numbers); it does not take part in equality.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Union


@dataclasses.dataclass(frozen=True)
class CallFrame:
  """A function invocation starts (or a generator resumes); `locals` are its arguments."""
  locals: dict[str, str]
  source_line: str
  lineno: int | None = dataclasses.field(default=None, compare=False)
  event: ClassVar[str] = "call"


@dataclasses.dataclass(frozen=True)
class LineFrame:
  """About to run `source_line`; `locals` are the state before it."""
  locals: dict[str, str]
  source_line: str
  lineno: int | None = dataclasses.field(default=None, compare=False)
  event: ClassVar[str] = "line"


@dataclasses.dataclass(frozen=True)
class ReturnFrame:
  """The invocation exits; `value` is repr of the returned (or yielded) value, "None"
  when an exception propagates out."""
  source_line: str
  value: str
  lineno: int | None = dataclasses.field(default=None, compare=False)
  event: ClassVar[str] = "return"


@dataclasses.dataclass(frozen=True)
class ExceptionFrame:
  """An exception is raised in, or propagates through, the frame; `value` is its repr."""
  source_line: str
  value: str
  lineno: int | None = dataclasses.field(default=None, compare=False)
  event: ClassVar[str] = "exception"


Frame = Union[CallFrame, LineFrame, ReturnFrame, ExceptionFrame]
FRAME_TYPES: dict[str, type] = {t.event: t for t in (CallFrame, LineFrame, ReturnFrame,
                                                      ExceptionFrame)}


@dataclasses.dataclass(frozen=True)
class Trace:
  """CONTEXT and its frames. `ended` is True when the entry function returned (the text
  ends with <|end_of_text|>); a model's unfinished output parses with `ended=False`."""
  context: str
  frames: tuple[Frame, ...]
  ended: bool = True

  def __post_init__(self):
    object.__setattr__(self, "frames", tuple(self.frames))

  @property
  def return_value(self) -> str | None:
    """repr of the entry function's return value (None if the trace did not end)."""
    if self.ended and self.frames and isinstance(self.frames[-1], ReturnFrame):
      return self.frames[-1].value
    return None
