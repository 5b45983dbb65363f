"""SamplerCompleter's contract on a recording stand-in for cwm_jax.inference.Sampler:
n samples per prompt in order, per-row seeds independent of the batch size, stop
tokens always included, and prompts that fill the KV cache counted and answered ""."""

import numpy as np
import pytest

from cwm_jax.evals.model import Completer, SamplerCompleter, complete_checked
from cwm_jax.inference import GenerationResult


class RecordingSampler:
  """Echoes each row's last prompt id and its seed; records the calls."""

  def __init__(self, max_len):
    self.max_len, self.calls = max_len, []

  def generate(self, prompts, *, max_new_tokens, sampling, stop_token_ids, stop_strings,
               tokenizer, seed):
    self.calls.append(dict(n=len(prompts), max_new_tokens=max_new_tokens,
                           temperature=sampling.temperature, stops=tuple(stop_token_ids),
                           stop_strings=stop_strings))
    texts = [f"{p[-1]}:{s}" for p, s in zip(prompts, seed)]
    return GenerationResult([[1]] * len(prompts), [np.zeros(1)] * len(prompts),
                            [np.zeros(1)] * len(prompts), ["length"] * len(prompts), texts)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_sampler_completer(tokenizer, batch_size):
  sampler = RecordingSampler(max_len=20)
  completer = SamplerCompleter(sampler, tokenizer, batch_size=batch_size)
  assert isinstance(completer, Completer)
  prompts = [[5] * 4, [6] * 15, [7] * 25]  # room 16 (budget 10), 5, none
  out = complete_checked(completer, prompts, n=2, max_new_tokens=10, temperature=0.7,
                         stop_token_ids=[99], seed=3)
  base = 3 * 1_000_003
  assert out == [[f"5:{base}", f"5:{base + 1}"], [f"6:{base + 2}", f"6:{base + 3}"], ["", ""]]
  assert completer.prompts_too_long == 2
  assert sorted({c["max_new_tokens"] for c in sampler.calls}) == [5, 10]
  assert all(c["stops"][:3] == tokenizer.stop_ids and 99 in c["stops"] for c in sampler.calls)
  assert max(c["n"] for c in sampler.calls) <= batch_size


def test_complete_checked_rejects_a_wrong_shape(tokenizer, function_completer):
  bad = function_completer(tokenizer, lambda text, kw: ["a"])  # 1 text where n=2 was asked
  with pytest.raises(ValueError, match="expected a list of 2 strings"):
    complete_checked(bad, [[1]], n=2, max_new_tokens=4)
