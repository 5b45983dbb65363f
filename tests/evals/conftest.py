"""Shared fixtures for the eval tests: dev-set paths, a toy tokenizer, reference "models".

Reference models implement the Completer protocol without a network: they read the
prompt back from its token ids and answer from known truth (the real tracer's
traces, reference outputs), optionally corrupted in ways whose effect the tests
compute exactly.
"""

import os
import shutil

import pytest

from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer.toy import toy_tiktoken_tokenizer
from data_pipelines.traces.format import format_trace
from data_pipelines.traces.frames import Trace
from data_pipelines.traces.parse import parse_trace

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("CWM_EVAL_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))


def dev_file(name: str) -> str:
  path = os.path.join(DATA, name)
  if not os.path.exists(path):
    pytest.skip(f"{path} not found")
  return path


@pytest.fixture(scope="session")
def need_sandbox():
  if shutil.which("bwrap") is None:
    pytest.skip("bubblewrap is not installed (apt-get install -y bubblewrap)")


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
  return toy_tiktoken_tokenizer(tmp_path_factory.mktemp("tok"))


class FunctionCompleter:
  """A Completer answering each prompt text (decoded ids) with `answer(text, kwargs)`."""

  def __init__(self, tokenizer, answer):
    self._tokenizer, self.answer = tokenizer, answer
    self.calls = []

  @property
  def tokenizer(self):
    return self._tokenizer

  def complete(self, prompts, *, n=1, max_new_tokens, temperature=0.0, top_p=1.0,
               stop_strings=(), stop_token_ids=(), seed=0):
    kwargs = dict(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                  stop_strings=tuple(stop_strings), stop_token_ids=tuple(stop_token_ids),
                  seed=seed)
    self.calls.append(kwargs)
    out = []
    for ids in prompts:
      answers = self.answer(self._tokenizer.decode(ids), kwargs)
      out.append(list(answers) if isinstance(answers, list) else [answers] * n)
    return out


class TraceOracle(FunctionCompleter):
  """Replays true traces: a one-frame request (stop at <|frame_sep|>) gets the true next
  frame's text, a full request the rest of the trace. `corrupt_frame(context, k, text)`
  and `corrupt_full(context, text)` may change the answer."""

  def __init__(self, tokenizer, traces, corrupt_frame=None, corrupt_full=None):
    super().__init__(tokenizer, self._answer)
    self.by_context = {t.context: t for t in traces}
    self.corrupt_frame, self.corrupt_full = corrupt_frame, corrupt_full

  def _answer(self, text, kwargs):
    seen = parse_trace(text, partial=True)
    trace = self.by_context[seen.context]
    k = len(seen.frames)
    assert seen.frames == trace.frames[:k]
    prefix = format_trace(Trace(trace.context, trace.frames[:k], ended=False))
    assert text == prefix, "the prompt is not the canonical trace prefix"
    rest = format_trace(trace)[len(prefix):]
    if self._tokenizer.special_ids[st.FRAME_SEP] in kwargs["stop_token_ids"]:
      frame = rest[:rest.index(st.FRAME_SEP) + len(st.FRAME_SEP)]
      return self.corrupt_frame(trace.context, k, frame) if self.corrupt_frame else frame
    return self.corrupt_full(trace.context, rest) if self.corrupt_full else rest


@pytest.fixture
def function_completer():
  return FunctionCompleter


@pytest.fixture
def trace_oracle():
  return TraceOracle
