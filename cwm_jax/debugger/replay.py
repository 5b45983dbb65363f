"""`ReplayTraceModel`: a stand-in "model" that predicts a real trace perfectly.

It holds the token ids of a trace made by the real tracer (`trace_context`, in the
sandbox) and answers each `continue_frame` with the true next frame. It is how the
debugger's commands are tested against ground truth, and a way to browse a real
trace with the debugger's commands.

Rules, so that a test can never pass by accident:
- the prefix must be exactly the start of the true trace, ending at a frame boundary,
  else `TraceModelError` (the debugger lost track of the trace);
- forced tokens are honoured only where the true next frame starts with them; where
  it does not (e.g. `<|return_sep|>` forced while the true trace runs another line)
  the replay raises `ForcedTokensRejected` naming both, since the real program never
  takes that path and there is nothing true to replay.
After the entry function's return frame the next "frame" is `[<|end_of_text|>]`.
"""

from __future__ import annotations

from collections.abc import Sequence

from cwm_jax.debugger.model import ForcedTokensRejected, TraceModelError
from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer.base import Tokenizer
from cwm_jax.tokenizer.formats import encode_trace_prompt
from data_pipelines.traces import executors
from data_pipelines.traces.format import encode_trace, frame_pieces
from data_pipelines.traces.frames import Trace
from data_pipelines.traces.trace import TraceLimits, trace_context


class ReplayTraceModel:
  """Replays `trace` (which must have ended) token for token."""

  def __init__(self, tokenizer: Tokenizer, trace: Trace):
    if not trace.ended:
      raise ValueError("ReplayTraceModel needs a whole trace (one that ended), got an "
                       "unfinished one")
    self.tokenizer, self.trace = tokenizer, trace
    sp = tokenizer.special_ids
    self.ids = encode_trace_prompt(tokenizer, trace.context)
    self.boundaries = [len(self.ids)]  # where each frame (and <|end_of_text|>) starts
    for pieces in frame_pieces(trace.frames):
      for is_special, text in pieces:
        self.ids += [sp[text]] if is_special else tokenizer.encode(text)
      self.boundaries.append(len(self.ids))
    self.ids.append(sp[st.EOS])
    if self.ids != encode_trace(tokenizer, trace):
      raise AssertionError("frame-by-frame encoding differs from encode_trace")

  @classmethod
  def from_context(cls, tokenizer: Tokenizer, context: str, *, stdin: str = "",
                   limits: TraceLimits = TraceLimits(),
                   executor: executors.Executor | None = None) -> "ReplayTraceModel":
    """Traces `context` with the real tracer (the sandbox unless `executor` says
    otherwise) and replays the result."""
    result = trace_context(context, stdin=stdin, limits=limits, executor=executor)
    if not result.ok:
      raise TraceModelError(f"the tracer could not trace this context ({result.status}/"
                            f"{result.kind}): {result.reason}")
    return cls(tokenizer, result.trace)

  def continue_frame(self, prefix_ids: Sequence[int], forced_ids: Sequence[int] = ()
                     ) -> list[int]:
    prefix, forced = [int(i) for i in prefix_ids], [int(i) for i in forced_ids]
    n = len(prefix)
    if prefix != self.ids[:n]:
      k = next((k for k, (a, b) in enumerate(zip(prefix, self.ids)) if a != b), len(self.ids))
      raise TraceModelError(f"the prefix leaves the replayed trace at token {k} (of "
                            f"{len(prefix)}); it is not the start of the true trace")
    if n not in self.boundaries:
      raise TraceModelError(f"the prefix ends at token {n}, inside a frame of the replayed "
                            "trace; a prefix must end at a frame boundary")
    k = self.boundaries.index(n)
    end = self.boundaries[k + 1] if k + 1 < len(self.boundaries) else len(self.ids)
    frame = self.ids[n:end]
    if frame[:len(forced)] != forced:
      raise ForcedTokensRejected(
          f"the true trace does not continue with the forced {self._show(forced)}: its next "
          f"frame is {self._show(frame)}")
    return frame

  def _show(self, ids: list[int]) -> str:
    return repr(self.tokenizer.decode(ids))
