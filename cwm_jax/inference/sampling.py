"""Next-token choice from logits: greedy, temperature, top-k, top-p; and log-probs.

Order (as HF transformers): divide by the temperature, keep the top-k logits,
then the smallest set of the remaining (renormalised) tokens whose probability
reaches top_p; sample from what is left. Ties at a cut-off are kept, so
top-k may keep more than k tokens when logits are exactly equal.

Log-probs returned with every sampled token (RL needs them):
  logprobs      the log-prob of the token under the distribution it was drawn
                from: softmax of the temperature-scaled logits *after* top-k/top-p
                truncation (the behaviour policy of RL's importance ratios). Greedy
                decoding (temperature 0) draws from no distribution; it reports the
                T=1 log-prob.
  raw_logprobs  log softmax(logits)[token]: the model's own (T=1) distribution.

Randomness: row b at generation step n draws with `fold_in(key_b, n)`, so a
row's samples depend only on its own key and logits, not on the other rows.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """temperature 0 is greedy (argmax); top_k 0 and top_p 1.0 switch those filters off."""

  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0

  def __post_init__(self):
    t, p, k = self.temperature, self.top_p, self.top_k
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
      raise ValueError(f"SamplingConfig.temperature={t!r}: expected a finite float >= 0 "
                       "(0 = greedy).")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
      raise ValueError(f"SamplingConfig.top_p={p!r}: expected a float in (0, 1] (1 = off).")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
      raise ValueError(f"SamplingConfig.top_k={k!r}: expected an int >= 0 (0 = off).")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0

  @property
  def filtered(self) -> bool:
    """Whether top-k or top-p truncates the distribution (needs a sort over V)."""
    return not self.greedy and (self.top_k > 0 or self.top_p < 1.0)

  @classmethod
  def greedy_config(cls) -> "SamplingConfig":
    return cls(temperature=0.0)


def filter_logits(scaled_BV, top_k, top_p):
  """Sets logits outside the top-k / top-p set to -inf.

  `top_k` (int, 0 = off) and `top_p` (float, 1 = off) are scalars, traced or
  not, so new values do not recompile. Costs one sort over the vocabulary.
  """
  V = scaled_BV.shape[-1]
  sorted_BV = -jnp.sort(-scaled_BV, axis=-1)
  kth_B1 = jnp.take_along_axis(sorted_BV, jnp.full((scaled_BV.shape[0], 1),
                                                   jnp.clip(top_k - 1, 0, V - 1)), axis=-1)
  kth_B1 = jnp.where(top_k > 0, kth_B1, -jnp.inf)
  sorted_BV = jnp.where(sorted_BV >= kth_B1, sorted_BV, -jnp.inf)
  probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
  # Keep token i (in sorted order) while the mass strictly before it is < top_p:
  # the smallest prefix reaching top_p, never empty. top_p = 1 keeps every
  # token even where the float cumsum reaches 1 early.
  before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
  keep_BV = ((before_BV < top_p) | (top_p >= 1.0)) & (sorted_BV > -jnp.inf)
  n_keep_B1 = jnp.maximum(jnp.sum(keep_BV, axis=-1, keepdims=True), 1)
  cutoff_B1 = jnp.take_along_axis(sorted_BV, n_keep_B1 - 1, axis=-1)
  return jnp.where(scaled_BV >= cutoff_B1, scaled_BV, -jnp.inf)


def sample_tokens(logits_BV, keys_B, step, temperature, top_k, top_p, *, greedy: bool,
                  filtered: bool):
  """(tokens [B] int32, logprobs [B], raw_logprobs [B]) for f32 logits [B, V].

  keys_B: typed PRNG keys, one per row; step: the generation step (folded in).
  `greedy` and `filtered` are static (they change the program), the numbers not.
  """
  logits_BV = logits_BV.astype(jnp.float32)
  raw_BV = jax.nn.log_softmax(logits_BV, axis=-1)
  if greedy:
    tokens_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logp_BV = raw_BV
  else:
    scaled_BV = logits_BV / temperature
    if filtered:
      scaled_BV = filter_logits(scaled_BV, top_k, top_p)
    logp_BV = jax.nn.log_softmax(scaled_BV, axis=-1)
    step_keys_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, step)
    tokens_B = jax.vmap(jax.random.categorical)(step_keys_B, scaled_BV).astype(jnp.int32)
  pick = lambda a_BV: jnp.take_along_axis(a_BV, tokens_B[:, None], axis=-1)[:, 0]
  return tokens_B, pick(logp_BV), pick(raw_BV)
