"""`SamplerTraceModel`: a real model's next frame, decoded greedily with the sampler.

Each `continue_frame` call generates from the whole prefix (+ forced tokens) until
`<|frame_sep|>` ends the frame, or a stop token (`<|end_of_text|>` ends the trace;
`<|eom_id|>` / `<|eot_id|>` are not trace tokens and make the frame unparseable), or
`max_frame_tokens`. Greedy decoding makes a session reproducible: after `back`, the
same frame is predicted again. The prefix is prefilled again for every frame (no
cache is kept between frames): simple, and cheap next to a frame's decoding at the
lengths a debugging session reaches.
"""

from __future__ import annotations

from collections.abc import Sequence

from cwm_jax.debugger.model import TraceModelError
from cwm_jax.inference.sampler import Sampler, check_tokenizer
from cwm_jax.inference.sampling import SamplingConfig
from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer.base import Tokenizer

DEFAULT_MAX_LEN = 8192  # the pre-training context: traces of small programs fit
DEFAULT_MAX_FRAME_TOKENS = 1024


class SamplerTraceModel:
  """Wraps a `cwm_jax.inference.Sampler`; the sampler's `max_len` bounds the trace."""

  def __init__(self, sampler: Sampler, tokenizer: Tokenizer, *,
               max_frame_tokens: int = DEFAULT_MAX_FRAME_TOKENS):
    if max_frame_tokens < 1:
      raise ValueError(f"max_frame_tokens must be >= 1, got {max_frame_tokens}")
    self.sampler, self.tokenizer = sampler, tokenizer
    self.max_frame_tokens = max_frame_tokens
    self.max_len = int(sampler.max_len)
    self.stop_ids = tuple(tokenizer.special_ids[t] for t in (st.FRAME_SEP, *st.STOP_TOKENS))

  @classmethod
  def from_params(cls, model_cfg, params, tokenizer: Tokenizer, *, max_len: int | None = None,
                  max_frame_tokens: int = DEFAULT_MAX_FRAME_TOKENS, mesh=None
                  ) -> "SamplerTraceModel":
    """Builds the sampler for (config, params); `max_len` defaults to the smaller of
    the model's `max_seq_len` and DEFAULT_MAX_LEN."""
    check_tokenizer(tokenizer, model_cfg)
    max_len = max_len or min(model_cfg.max_seq_len, DEFAULT_MAX_LEN)
    return cls(Sampler(model_cfg, params, mesh=mesh, max_len=max_len), tokenizer,
               max_frame_tokens=max_frame_tokens)

  def continue_frame(self, prefix_ids: Sequence[int], forced_ids: Sequence[int] = ()
                     ) -> list[int]:
    prompt = [int(i) for i in prefix_ids] + [int(i) for i in forced_ids]
    room = self.max_len - len(prompt)
    if room < 1:
      raise TraceModelError(f"the trace is {len(prompt)} tokens long and the sampler holds "
                            f"{self.max_len}: no room for another frame (raise --max_len)")
    try:
      result = self.sampler.generate([prompt], max_new_tokens=min(self.max_frame_tokens, room),
                                     sampling=SamplingConfig.greedy_config(),
                                     stop_token_ids=self.stop_ids)
    except ValueError as e:
      raise TraceModelError(f"the sampler refused the trace prefix: {e}") from None
    return [int(i) for i in forced_ids] + [int(i) for i in result.tokens[0]]
