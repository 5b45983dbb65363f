"""End to end through the sampler with a model that knows the answer: the tiny model
trained until it has memorised one real trace must, decoded greedily frame by frame,
give the same stops as replaying that trace (commands, forced returns included)."""

import jax
import numpy as np
import optax
import pytest
from tests.debugger.conftest import PROGRAMS

from cwm_jax.debugger.replay import ReplayTraceModel
from cwm_jax.debugger.sampler_model import SamplerTraceModel
from cwm_jax.debugger.session import NeuralDebugger
from cwm_jax.model import get_preset, init_params, transformer

STEPS = 300


def memorise(cfg, ids):
  """Adam on the one sequence until it is predicted token for token."""
  tokens_1T = np.asarray(ids, np.int32)[None]
  params = init_params(cfg, jax.random.key(0))
  opt = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state):
    def loss(p):
      logits_1TV = transformer.forward(p, tokens_1T[:, :-1], cfg)
      return optax.softmax_cross_entropy_with_integer_labels(logits_1TV, tokens_1T[:, 1:]).mean()
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  opt_state = opt.init(params)
  for _ in range(STEPS):
    params, opt_state, _ = step(params, opt_state)
  logits_1TV = transformer.forward(params, tokens_1T[:, :-1], cfg)
  assert (np.asarray(logits_1TV.argmax(-1)) == tokens_1T[:, 1:]).all(), "not memorised"
  return params


@pytest.mark.slow
def test_memorised_model_reproduces_the_true_session(tokenizer, true_traces):
  source, call = PROGRAMS["loops"]
  replay = ReplayTraceModel(tokenizer, true_traces["loops"])
  cfg = get_preset("tiny")
  params = memorise(cfg, replay.ids)
  model = SamplerTraceModel.from_params(cfg, params, tokenizer, max_len=1024,
                                        max_frame_tokens=64)
  script = ["step", "step", "step", "next", "next", "next", "step", "step", "out", "next",
            "next", "next", "next", "step", "step", "back", "back", "out", "step"]
  sessions = [NeuralDebugger(m, tokenizer, source, call) for m in (replay, model)]
  for command in script:
    expected, got = (getattr(d, command)() for d in sessions)
    assert got == expected, command
  truth = NeuralDebugger(replay, tokenizer, source, call)
  while not truth.cont().ended:
    pass
  truth = truth.states()
  sessions[1].reset()
  # `return x * x` in square(): the true next frame is its return; force it.
  while not (sessions[1].state.event == "line" and sessions[1].state.function == "square"):
    sessions[1].step()
  k = sessions[1].state.index
  assert truth[k + 1].event == "return"
  assert sessions[1].out(force=True) == truth[k + 1]
  assert sessions[1].cont().value == "5"
