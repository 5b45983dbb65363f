"""NeuralDebugger's commands against ground truth: the replay model predicts the real
tracer's trace of real programs, and every stop is compared with the true trace and
with the real pdb run on the same program with the same commands."""

import json
import os
import random
import subprocess
import sys

import pytest
from tests.debugger.conftest import ALL_PROGRAMS, PROGRAMS, offset_of

from cwm_jax.debugger.model import ForcedTokensRejected, TraceModelError
from cwm_jax.debugger.replay import ReplayTraceModel
from cwm_jax.debugger.session import DebuggerError, NeuralDebugger, PredictionError
from cwm_jax.tokenizer import special_tokens as st
from data_pipelines.traces.frames import CallFrame, LineFrame, ReturnFrame

PDB_REFERENCE = os.path.join(os.path.dirname(__file__), "pdb_reference.py")
PDB_NAMES = {"step": "step", "next": "next", "out": "return"}


def reference_states(trace):
  """Per true frame: (event, CONTEXT lineno, depth, locals, value), computed with a
  plain stack of invocations (call pushes, return pops)."""
  stack, out = [], []
  for frame in trace.frames:
    if isinstance(frame, CallFrame):
      stack.append(dict(frame.locals))
    elif isinstance(frame, LineFrame):
      stack[-1] = dict(frame.locals)
    value = None if isinstance(frame, (CallFrame, LineFrame)) else frame.value
    out.append((frame.event, frame.lineno, len(stack), stack[-1], value))
    if isinstance(frame, ReturnFrame):
      stack.pop()
  return out


def summary(state, offset):
  return (state.event, state.lineno + offset, state.depth, dict(state.locals), state.value)


def run_to_end(debugger):
  states = [debugger.step()]
  while not states[-1].ended:
    states.append(debugger.step())
  return states


@pytest.mark.parametrize("name", sorted(ALL_PROGRAMS))
def test_step_visits_every_true_frame(name, make_debugger, true_traces):
  debugger = make_debugger(name)
  assert debugger.state.event == "start"
  states = run_to_end(debugger)
  trace = true_traces[name]
  assert [summary(s, offset_of(name)) for s in states] == reference_states(trace)
  assert [s.source_line + "\n" for s in states] == [f.source_line for f in trace.frames]
  assert [s.index for s in states] == list(range(len(trace.frames)))
  assert states[-1].ended and states[-1].depth == 1 and states[-1].function == \
      states[0].function
  assert debugger.trace_ids == ReplayTraceModel(debugger.tokenizer, trace).ids[:-1]
  for command in (debugger.step, debugger.next, debugger.out, debugger.cont):
    with pytest.raises(DebuggerError, match="the trace has ended"):
      command()
  assert len(debugger.states()) == len(trace.frames)


def pdb_stops(context, commands):
  proc = subprocess.run([sys.executable, PDB_REFERENCE],
                        input=json.dumps({"context": context, "commands": commands}),
                        capture_output=True, text=True, timeout=60, check=True,
                        env={**os.environ, "PYTHONHASHSEED": "0"})
  return json.loads(proc.stdout)


def scripts():
  fixed = [["step"] * 60, ["next"] * 30, ["out"] * 10,
           ["step", "step", "next", "next", "out", "next", "step", "out", "out"]]
  rng = random.Random(0)
  randomized = [[rng.choice(["step", "step", "next", "next", "out"]) for _ in range(40)]
                for _ in range(3)]
  return fixed + randomized


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_commands_stop_where_pdb_stops(name, make_debugger):
  offset = offset_of(name)
  for script in scripts():
    debugger = make_debugger(name)
    debugger.step()
    ours = [debugger.step()]  # pdb's first stop: the entry's first line
    issued = []
    for command in script:
      if ours[-1].ended:
        break
      issued.append(PDB_NAMES[command])
      ours.append(getattr(debugger, command)())
    theirs = pdb_stops(debugger.context, issued)
    assert len(ours) == len(theirs), (script, issued)
    for k, (state, stop) in enumerate(zip(ours, theirs)):
      where = (name, issued[:k])
      assert (state.event, state.lineno + offset, state.function) == \
          (stop["event"], stop["lineno"], stop["function"]), where
      if state.event in ("call", "line"):
        assert dict(state.locals) == stop["locals"], where
      if state.event in ("return", "exception"):
        assert state.value == stop["value"], where


@pytest.mark.parametrize("name", ["recursion", "exception"])
def test_back_undoes_and_reset_restarts(name, make_debugger):
  debugger = make_debugger(name)
  with pytest.raises(DebuggerError, match="no frame yet"):
    debugger.back()
  states = run_to_end(debugger)
  n = len(states)
  debugger.reset()
  assert debugger.state == states[0] and debugger.states() == states[:1]
  for _ in range(n - 1):
    debugger.step()
  for k in range(n - 2, n - 7, -1):
    assert debugger.back() == states[k]
    assert debugger.states() == states[:k + 1]
  here = states[n - 6]
  assert debugger.next() == (states[n - 5] if here.event == "return" else
                             next(s for s in states[n - 5:] if s.depth <= here.depth))
  while not debugger.state.ended:
    debugger.step()
  assert debugger.states() == states
  assert debugger.reset() == states[0]
  with pytest.raises(DebuggerError, match="already at the first frame"):
    debugger.back()
  assert debugger.step() == states[1]


def test_print_shows_the_true_resolved_locals(make_debugger, true_traces):
  debugger = make_debugger("loops")
  with pytest.raises(DebuggerError, match="no frame yet"):
    debugger.print()
  frames = true_traces["loops"].frames
  for frame in frames:
    state = debugger.step()
    values = debugger.print()
    if isinstance(frame, (CallFrame, LineFrame)):
      assert values == frame.locals
      for var, value in frame.locals.items():
        assert debugger.print(var) == {var: value}
    elif isinstance(frame, ReturnFrame):
      assert values["__return__"] == frame.value
      assert {k: v for k, v in values.items() if k != "__return__"} == state.locals
  with pytest.raises(DebuggerError, match="no local 'nope' in main"):
    debugger.print("nope")


def test_trace_ids_resolve_dots(make_debugger, tokenizer):
  """The true trace writes ".." for unchanged locals; the states hold full values."""
  debugger = make_debugger("loops")
  states = run_to_end(debugger)
  text = tokenizer.decode(debugger.trace_ids)
  assert '".."' in text
  assert all(".." not in v for s in states for v in s.locals.values())


def _first(states, predicate):
  return next(k for k, s in enumerate(states) if predicate(k, s))


def test_forced_return_where_the_true_trace_returns(make_debugger):
  truth = run_to_end(make_debugger("recursion"))
  # A line frame directly followed by its invocation's return: `return n` of fib(1).
  k = _first(truth, lambda k, s: s.event == "line" and truth[k + 1].event == "return")
  debugger = make_debugger("recursion")
  for _ in range(k + 1):
    debugger.step()
  assert debugger.out(force=True) == truth[k + 1]


def test_forced_return_the_true_trace_does_not_take(make_debugger):
  debugger = make_debugger("loops")
  for _ in range(4):
    debugger.step()  # sum_squares: `total = 0`, more lines follow before its return
  before = (debugger.state, debugger.trace_ids)
  with pytest.raises(ForcedTokensRejected, match="does not continue with the forced"):
    debugger.out(force=True)
  assert (debugger.state, debugger.trace_ids) == before
  for _ in range(2):
    debugger.step()  # `total += square(i)`: the next frame is square's call
  assert debugger.state.source_line.strip() == "total += square(i)"
  before = (debugger.state, debugger.trace_ids)
  with pytest.raises(ForcedTokensRejected):
    debugger.next(force=True)  # square's call frame, then its return forced: not true
  assert (debugger.state, debugger.trace_ids) == before


class _Corrupting:
  """The replay model, but its `bad`-th answer is replaced by `make(true frame ids)`."""

  def __init__(self, replay, bad, make):
    self.replay, self.bad, self.make, self.calls = replay, bad, make, 0

  def continue_frame(self, prefix_ids, forced_ids=()):
    ids = self.replay.continue_frame(prefix_ids, forced_ids)
    self.calls += 1
    return self.make(ids) if self.calls == self.bad else ids


def test_unparseable_prediction_is_reported_and_rolled_back(make_debugger, tokenizer,
                                                             true_traces):
  sp = tokenizer.special_ids
  cases = {
      "junk": (lambda ids: [sp[st.LINE_SEP]] + tokenizer.encode("{not json") +
               [sp[st.ACTION_SEP]] + tokenizer.encode("x\n") + [sp[st.FRAME_SEP]],
               "LOCALS is not valid JSON"),
      "cut": (lambda ids: ids[:-1], "not one whole frame"),
      "two": (lambda ids: ids + ids, "not one whole frame"),
      "stop": (lambda ids: ids[:-1] + [sp[st.EOT]], "unexpected special token"),
  }
  for case, (make, message) in cases.items():
    replay = ReplayTraceModel(tokenizer, true_traces["loops"])
    debugger = make_debugger("loops", _Corrupting(replay, 6, make))
    for _ in range(4):
      debugger.step()
    before = (debugger.state, debugger.trace_ids)
    with pytest.raises(PredictionError, match=message) as info:
      debugger.out()  # frames 5, 6 (bad), ...
    assert "predicted:" in str(info.value), case
    assert (debugger.state, debugger.trace_ids) == before, case
    truth = run_to_end(make_debugger("loops"))
    assert debugger.out() == next(s for s in truth[4:] if s.event == "return" and
                                  s.depth == truth[3].depth), case


def test_interrupt_rolls_back(make_debugger, tokenizer, true_traces):
  def interrupt(ids):
    raise KeyboardInterrupt

  replay = ReplayTraceModel(tokenizer, true_traces["loops"])
  debugger = make_debugger("loops", _Corrupting(replay, 7, interrupt))
  for _ in range(4):
    debugger.step()
  before = (debugger.state, debugger.trace_ids)
  with pytest.raises(KeyboardInterrupt):
    debugger.cont()
  assert (debugger.state, debugger.trace_ids) == before


def test_model_ending_the_trace_early(make_debugger, tokenizer, true_traces):
  replay = ReplayTraceModel(tokenizer, true_traces["loops"])
  eos = tokenizer.special_ids[st.EOS]
  debugger = make_debugger("loops", _Corrupting(replay, 3, lambda ids: [eos]))
  debugger.step()
  debugger.step()
  state = debugger.step()
  assert (state.event, state.ended, state.depth, state.function) == ("end", True, 1, "main")
  with pytest.raises(DebuggerError, match="the model ended it"):
    debugger.step()
  assert debugger.back().index == 1


def test_replay_rejects_a_prefix_off_the_true_trace(tokenizer, true_traces):
  replay = ReplayTraceModel(tokenizer, true_traces["loops"])
  assert replay.continue_frame(replay.ids[:replay.boundaries[2]]) == \
      replay.ids[replay.boundaries[2]:replay.boundaries[3]]
  assert replay.continue_frame(replay.ids[:-1]) == [tokenizer.eos_id]
  with pytest.raises(TraceModelError, match="inside a frame"):
    replay.continue_frame(replay.ids[:replay.boundaries[2] + 1])
  other = list(replay.ids[:replay.boundaries[2]])
  other[5] += 1
  with pytest.raises(TraceModelError, match="leaves the replayed trace at token 5"):
    replay.continue_frame(other)


def test_rejects_a_non_model(tokenizer):
  with pytest.raises(TypeError, match="TraceModel"):
    NeuralDebugger(object(), tokenizer, *PROGRAMS["loops"])


def _at_line(debugger, text):
  state = debugger.step()
  while state.source_line.strip() != text or state.event != "line":
    state = debugger.step()
  return state


@pytest.mark.parametrize("line,name", [("ys = [square(x) for x in xs]", "<listcomp>"),
                                       ("s = sorted(ys, key=lambda v: -v)", "<lambda>")])
def test_step_enters_a_comprehension_or_lambda_and_next_steps_over_it(make_debugger, line, name):
  debugger = make_debugger("comprehensions")
  here = _at_line(debugger, line)
  entered = debugger.step()
  assert (entered.event, entered.function, entered.depth) == ("call", name, here.depth + 1)
  assert entered.source_line.strip() == line
  debugger = make_debugger("comprehensions")
  here = _at_line(debugger, line)
  after = debugger.next()
  assert (after.event, after.function, after.depth) == ("line", "build", here.depth)
  assert after.lineno > here.lineno


def test_generator_expression_frames_are_named_and_placed(make_debugger, true_traces):
  states = run_to_end(make_debugger("genexpr"))
  genexpr = [s for s in states if s.function == "<genexpr>"]
  assert {s.lineno for s in genexpr} == {2, 3}
  assert [s.event for s in genexpr if s.lineno == 2].count("call") == 4  # start + 3 resumes
  assert states[-1].value == "14"
