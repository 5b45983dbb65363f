"""`NeuralDebugger`: pdb's commands over a trace the model predicts, frame by frame.

Nothing is executed: each frame (event, locals, source line) is the model's
prediction, asked for with the trace prompt of the source and the frames so far,
parsed with the trace parser (`".."` resolved against the baseline frame, FORMATS.md
rule 4). The session starts before the first frame; `step()` predicts it (the call of
the entry function).

Depth is the number of active invocations: a call frame pushes one (the call frame
has the callee's depth), a return frame pops it (the return frame has the depth of
the function returning). The entry function is depth 1; its return ends the trace.
With d the depth of the current frame, the commands mirror pdb (Python 3.11 bdb):

  step      the next frame, whatever it is (pdb stops at every call, line, return and
            exception event).
  next      the next frame at depth <= d: the next line, exception or return of this
            invocation, callees run through. On a return frame, same as step (pdb).
  out       (pdb `return`) the return frame of this invocation (depth d), its
            exceptions and callees run through. On a return frame, same as step.
  continue  to the end of the trace.
  back      undo the last frame: the trace is cut back to the previous frame, so the
            next command predicts again from there.
  reset     cut the trace back to its first frame.

`next` and `out` generate every frame in between by default, so the model sees a
trace like those it was trained on. With `force=True` they jump instead:
`out(force=True)` forces `<|return_sep|>` as the next frame's first token, so the
model predicts this invocation's return (line and value) from the current state;
`next(force=True)` does the same for every callee entered from this invocation,
right after its call frame. Function-level training traces never skip a body (the
repository-level ones do, when a callee is not stepped into), so treat these
predictions as a shortcut, not as the model's best guess.

Locals of call/line frames are the predicted state before the line; a return or
exception frame shows none in the trace, so its state keeps the invocation's latest
call/line locals (pdb would show them after the last line ran) plus `value`.

Commands are atomic: when a prediction cannot be parsed, the model fails or the
user interrupts, the trace is cut back to where the command started and the error
raised.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

from cwm_jax.debugger.context import Scope, SourceMap, context_offset, make_context
from cwm_jax.debugger.model import TraceModel, TraceModelError
from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer.base import Tokenizer
from cwm_jax.tokenizer.formats import encode_trace_prompt
from data_pipelines.traces.frames import CallFrame, Frame, LineFrame, ReturnFrame
from data_pipelines.traces.parse import TraceParseError, parse_trace_ids

MAX_FRAMES = 10_000  # FORMATS.md rule 8: no trace has more events
_PARSER_PREFIX_RE = re.compile(r"^trace (frame \d+ )?at (token \d+|the end): ")
_DEF_RE = re.compile(r"\s*(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)")


class DebuggerError(RuntimeError):
  """A command that cannot run here (e.g. `back` at the first frame); nothing changed."""


class PredictionError(DebuggerError):
  """The model's next frame is not a usable frame; `text` is what it predicted."""

  def __init__(self, message: str, text: str = ""):
    super().__init__(message + (f"\n  predicted: {text[:300]!r}" if text else ""))
    self.text = text


@dataclasses.dataclass(frozen=True)
class DebuggerState:
  """Where the debugger stands: one predicted frame.

  `index` is the frame's position in the trace (0: the entry's call; -1: nothing
  predicted yet). `event` is call/line/return/exception, "start" before the first
  frame, or "end" when the model ended the trace early. `lineno` is the line in the
  user's source file (the generated `main` wrapper continues after its last line),
  None when the predicted line is not a line of the source. `value` is the repr
  returned or raised by a return/exception frame. `ended`: no frame can follow.
  """
  index: int
  event: str
  lineno: int | None
  source_line: str
  function: str | None
  depth: int
  locals: Mapping[str, str]
  value: str | None = None
  ended: bool = False


@dataclasses.dataclass(frozen=True)
class Invocation:
  """An active function invocation: its scope, latest line (CONTEXT numbering) and
  latest call/line locals."""
  function: str
  scope: Scope | None
  lineno: int | None
  locals: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class _Entry:
  ids: tuple[int, ...]
  state: DebuggerState
  stack: tuple[Invocation, ...]  # active invocations at this frame, outermost first

  @property
  def after(self) -> tuple[Invocation, ...]:
    """Active invocations once this frame is done (a return frame pops one)."""
    return self.stack[:-1] if self.state.event == "return" else self.stack


_START = DebuggerState(index=-1, event="start", lineno=None, source_line="", function=None,
                       depth=0, locals={})


class NeuralDebugger:
  """pdb-style stepping through the trace `model` predicts for `source` (+ `call`)."""

  def __init__(self, model: TraceModel, tokenizer: Tokenizer, source: str,
               call: str | None = None, *, name: str = "<source>", max_frames: int = MAX_FRAMES):
    if not hasattr(model, "continue_frame"):
      raise TypeError(f"model must be a TraceModel (with continue_frame), got "
                      f"{type(model).__name__}")
    self.model, self.tokenizer, self.name = model, tokenizer, name
    self.context = make_context(source, call, name=name)
    self.source_map = SourceMap(self.context, context_offset(call))
    self.prompt_ids = encode_trace_prompt(tokenizer, self.context)
    self.max_frames = max_frames
    sp = tokenizer.special_ids
    self._frame_sep, self._eos, self._return_sep = sp[st.FRAME_SEP], sp[st.EOS], sp[st.RETURN_SEP]
    self._history: list[_Entry] = []

  # ---------------------------------------------------------------- inspection

  @property
  def state(self) -> DebuggerState:
    return self._history[-1].state if self._history else _START

  @property
  def stack(self) -> tuple[Invocation, ...]:
    """Active invocations, outermost first (for a return frame: still including it)."""
    return self._history[-1].stack if self._history else ()

  @property
  def trace_ids(self) -> list[int]:
    """The predicted trace so far: prompt + frames."""
    return self.prompt_ids + [i for e in self._history for i in e.ids]

  def states(self) -> list[DebuggerState]:
    """Every frame predicted so far, in order."""
    return [e.state for e in self._history]

  def print(self, var: str | None = None) -> dict[str, str]:
    """The current predicted locals (name -> repr), or just `var`. On a return or
    exception frame `__return__` / `__exception__` hold its value, as in pdb."""
    state = self.state
    if state.event == "start":
      raise DebuggerError("no frame yet: step first")
    values = dict(state.locals)
    if state.event == "return":
      values["__return__"] = state.value
    elif state.event == "exception":
      values["__exception__"] = state.value
    if var is None:
      return values
    if var not in values:
      where = f"in {state.function}" if state.function else "here"
      known = ", ".join(values) or "none"
      raise DebuggerError(f"no local {var!r} {where} (predicted locals: {known})")
    return {var: values[var]}

  # ---------------------------------------------------------------- commands

  def step(self) -> DebuggerState:
    """The next frame."""
    return self._run("step", lambda s: True)

  def next(self, force: bool = False) -> DebuggerState:
    """The next frame of this invocation (or the caller's, after a return)."""
    here = self._check_can_move("next")
    if here.event in ("start", "return"):
      return self.step()
    depth = here.depth
    force_fn = (lambda last: last.event == "call" and last.depth == depth + 1) if force else None
    return self._run("next", lambda s: s.depth <= depth, force_fn)

  def out(self, force: bool = False) -> DebuggerState:
    """The return frame of this invocation (pdb `return`)."""
    here = self._check_can_move("out")
    if here.event in ("start", "return"):
      return self.step()
    depth = here.depth
    force_fn = (lambda last: last.index == here.index) if force else None
    return self._run("out", lambda s: s.event == "return" and s.depth <= depth, force_fn)

  def cont(self) -> DebuggerState:
    """Every frame up to the end of the trace (pdb `continue` without breakpoints)."""
    return self._run("continue", lambda s: False)

  def back(self) -> DebuggerState:
    """Undoes the last frame."""
    if len(self._history) < 2:
      raise DebuggerError("already at the first frame: there is nothing to go back to"
                          if self._history else "no frame yet: step first")
    self._history.pop()
    return self.state

  def reset(self) -> DebuggerState:
    """Back to the first frame (predicting it when there is none yet)."""
    if not self._history:
      return self.step()
    del self._history[1:]
    return self.state

  # ---------------------------------------------------------------- machinery

  def _check_can_move(self, command: str) -> DebuggerState:
    state = self.state
    if state.ended:
      how = (f"the entry function returned {state.value}" if state.event == "return"
             else "the model ended it")
      raise DebuggerError(f"{command}: the trace has ended ({how}); use back or reset")
    return state

  def _run(self, command: str, stop: Callable[[DebuggerState], bool],
           force_fn: Callable[[DebuggerState], bool] | None = None) -> DebuggerState:
    """Predicts frames until `stop(state)` or the end; `force_fn(last state)` says when
    the next frame must start with `<|return_sep|>`. All or nothing."""
    self._check_can_move(command)
    start = len(self._history)
    try:
      while True:
        if len(self._history) >= self.max_frames:
          raise DebuggerError(f"{command}: the predicted trace reached {self.max_frames} frames "
                              "without ending (no trace is longer, FORMATS.md rule 8)")
        forced = [self._return_sep] if force_fn and force_fn(self.state) else []
        state = self._predict(forced)
        if state.ended or stop(state):
          return state
    except (DebuggerError, TraceModelError, KeyboardInterrupt):
      del self._history[start:]
      raise

  def _predict(self, forced: Sequence[int]) -> DebuggerState:
    prefix = self.trace_ids
    ids = [int(i) for i in self.model.continue_frame(prefix, list(forced))]
    text = self._safe_decode(ids)
    if ids[:len(forced)] != list(forced):
      raise PredictionError("the model's frame does not start with the forced tokens "
                            f"{self._safe_decode(list(forced))!r}", text)
    if not ids:
      raise PredictionError("the model predicted no tokens for the next frame")
    try:
      trace = parse_trace_ids(prefix + ids, self.tokenizer, partial=True, strict=False)
    except (TraceParseError, ValueError) as e:
      position = getattr(e, "position", None)
      where = f" (at its token {position - len(prefix)})" if position is not None else ""
      reason = _PARSER_PREFIX_RE.sub("", str(e))
      if position is not None:
        reason = reason.replace(f" at token {position}", "")
      raise PredictionError(f"the model's next frame does not parse{where}: {reason}",
                            text) from None
    known = len(self._history)
    if len(trace.frames) == known and trace.ended:
      return self._push(ids, None)
    if len(trace.frames) != known + 1 or ids.count(self._frame_sep) != 1 or \
        ids[-1] != self._frame_sep:
      raise PredictionError(f"the model's prediction is not one whole frame ending with "
                            f"{st.FRAME_SEP} ({len(ids)} tokens)", text)
    return self._push(ids, trace.frames[-1])

  def _push(self, ids: list[int], frame: Frame | None) -> DebuggerState:
    """Appends a parsed frame (None: the model ended the trace) and its state."""
    index = len(self._history)
    stack = self._history[-1].after if self._history else ()
    if frame is None:
      state = DebuggerState(index, "end", None, "", stack[-1].function if stack else None,
                            len(stack), dict(stack[-1].locals) if stack else {}, ended=True)
      self._history.append(_Entry(tuple(ids), state, stack))
      return state
    line = frame.source_line
    if isinstance(frame, CallFrame):
      lineno, scope = self.source_map.resolve_call(line, list(frame.locals),
                                                   stack[-1].scope if stack else None)
      match = _DEF_RE.match(line)
      function = scope.name if scope else (match.group(1) if match else "?")
      stack = stack + (Invocation(function, scope, lineno, dict(frame.locals)),)
      top = stack[-1]
    else:
      if not stack:
        raise PredictionError(f"the model predicted a {frame.event} frame before the call of "
                              "the entry function", self._safe_decode(ids))
      top = stack[-1]
      lineno = self.source_map.resolve(line, top.scope, top.lineno, frame.event)
      new_locals = dict(frame.locals) if isinstance(frame, LineFrame) else top.locals
      top = dataclasses.replace(top, lineno=lineno, locals=new_locals)
      stack = stack[:-1] + (top,)
    value = None if isinstance(frame, (CallFrame, LineFrame)) else frame.value
    state = DebuggerState(index, frame.event, self.source_map.user_line(lineno),
                          line[:-1] if line.endswith("\n") else line, top.function, len(stack),
                          dict(top.locals), value,
                          ended=isinstance(frame, ReturnFrame) and len(stack) == 1)
    self._history.append(_Entry(tuple(ids), state, stack))
    return state

  def _safe_decode(self, ids: list[int]) -> str:
    """Text of ids, with ids outside the tokenizer's vocabulary shown as <id N>."""
    n = self.tokenizer.vocab_size
    parts, run = [], []
    for i in ids:
      if 0 <= i < n:
        run.append(i)
      else:
        parts += [self.tokenizer.decode(run), f"<id {i}>"]
        run = []
    return "".join(parts + [self.tokenizer.decode(run)])
