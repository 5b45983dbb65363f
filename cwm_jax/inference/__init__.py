"""Inference: KV-cached prefill/decode, batched sampling, chat helpers.

    from cwm_jax.inference import Sampler, SamplingConfig
    sampler = Sampler(cfg, params, max_len=4096)
    result = sampler.generate(prompts, max_new_tokens=64,
                              sampling=SamplingConfig(temperature=0.7, top_p=0.95))
"""

from cwm_jax.model.kv_cache import KVCache, cache_bytes, cache_shapes, init_cache
from cwm_jax.inference.chat import ChatResult, chat, chat_batch, chat_prompt, parse_reply, tool_message
from cwm_jax.inference.decode import decode_step, extend, prefill
from cwm_jax.inference.sampler import (GREEDY, GenerationResult, Sampler, check_tokenizer,
                                       compile_count, generate)
from cwm_jax.inference.sampling import SamplingConfig, filter_logits, sample_tokens
from cwm_jax.inference.stopping import FINISH_REASONS, LENGTH, STOP_STRING, STOP_TOKEN
