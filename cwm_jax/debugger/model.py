"""What the neural debugger needs from a model: the next frame of a trace.

A `TraceModel` continues a trace one frame at a time. `prefix_ids` is the trace so
far as token ids: the trace prompt (`encode_trace_prompt`) followed by whole frames,
so it always ends with `<|frame_sep|>`. `forced_ids` are tokens the next frame must
start with (the debugger forces `<|return_sep|>` to jump to a return). The answer is
the next frame's ids, starting with `forced_ids`:

- one whole frame, ending with (and containing exactly one) `<|frame_sep|>`; or
- `[<|end_of_text|>]` when the model ends the trace; or
- whatever the model produced before it stopped for another reason (a token budget,
  another stop token), which the debugger reports as an unparseable prediction.

A model that cannot continue with `forced_ids` (a replay of a trace that went
another way) raises `ForcedTokensRejected`; any other failure raises
`TraceModelError`. Both leave the debugger where it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


class TraceModelError(RuntimeError):
  """The model could not produce a frame (not a bad prediction: a failure)."""


class ForcedTokensRejected(TraceModelError):
  """The model cannot continue the trace with the forced tokens."""


@runtime_checkable
class TraceModel(Protocol):

  def continue_frame(self, prefix_ids: Sequence[int], forced_ids: Sequence[int] = ()
                     ) -> list[int]:
    """The ids of the frame after `prefix_ids`, starting with `forced_ids`."""
    ...
