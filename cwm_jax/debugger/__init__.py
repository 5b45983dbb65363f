"""The neural debugger: pdb's commands over an execution trace the model predicts.

  model.py          `TraceModel` (the next frame of a trace), its errors
  replay.py         `ReplayTraceModel`: replays a real trace (ground truth for tests)
  sampler_model.py  `SamplerTraceModel`: a CWM model through cwm_jax.inference.Sampler
  context.py        source (+ call) -> trace CONTEXT; predicted lines -> line numbers
  session.py        `NeuralDebugger` (step/next/out/cont/back/reset/print), `DebuggerState`
  shell.py          the pdb-style interactive shell
  cli.py            `python -m experiments.debugger`
"""

from cwm_jax.debugger.context import SourceError, make_context
from cwm_jax.debugger.model import ForcedTokensRejected, TraceModel, TraceModelError
from cwm_jax.debugger.replay import ReplayTraceModel
from cwm_jax.debugger.sampler_model import SamplerTraceModel
from cwm_jax.debugger.session import (DebuggerError, DebuggerState, NeuralDebugger,
                                      PredictionError)

__all__ = ["NeuralDebugger", "DebuggerState", "DebuggerError", "PredictionError", "TraceModel",
           "TraceModelError", "ForcedTokensRejected", "ReplayTraceModel", "SamplerTraceModel", "SourceError",
           "make_context"]
