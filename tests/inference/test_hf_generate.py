"""Greedy generation equals HF transformers' `generate` token for token.

Our random tiny weights are written with `save_hf`, loaded by
`CwmForCausalLM.from_pretrained` in float32, and both generate 3x the local
window greedily; our batch mixes prompt lengths, HF runs each prompt alone.
The T=1 log-probs we return are compared with HF's scores too.
"""

import numpy as np
import pytest
import torch
from transformers import CwmForCausalLM

from cwm_jax.convert import save_hf
from cwm_jax.inference import Sampler
from tests.inference.conftest import WINDOW

NEW = 3 * WINDOW


@pytest.fixture(scope="module")
def hf_model(model, tmp_path_factory):
  cfg, params = model
  path = tmp_path_factory.mktemp("hf")
  save_hf(params, cfg, str(path))
  hf = CwmForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
  hf.config._attn_implementation = "eager"
  return hf


def test_greedy_equals_hf_generate(model, hf_model):
  cfg, params = model
  rng = np.random.RandomState(0)
  prompts = [rng.randint(0, cfg.vocab_size, n).tolist() for n in (5, 13, 1, 9)]
  ours = Sampler(cfg, params, max_len=64).generate(prompts, max_new_tokens=NEW)
  assert ours.finish_reasons == ["length"] * len(prompts)
  for i, prompt in enumerate(prompts):
    with torch.no_grad():
      out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=NEW, min_new_tokens=NEW,
                              do_sample=False, output_scores=True, return_dict_in_generate=True,
                              pad_token_id=0)
    hf_tokens = out.sequences[0, len(prompt):].tolist()
    assert ours.tokens[i] == hf_tokens, f"prompt {i}"
    hf_logp = torch.log_softmax(torch.stack(out.scores)[:, 0].float(), -1).numpy()
    hf_raw = hf_logp[np.arange(NEW), hf_tokens]
    np.testing.assert_allclose(ours.raw_logprobs[i], hf_raw, atol=1e-4, err_msg=f"prompt {i}")
    # Greedy: `logprobs` is the T=1 log-prob too.
    np.testing.assert_array_equal(ours.logprobs[i], ours.raw_logprobs[i])
