"""When a row stops generating: a stop token, a stop string, or its token budget.

A row's output keeps the token that stopped it (the stop token itself, or the
token whose text completed a stop string), with its log-prob: RL scores the
model's decision to stop. Stop strings are matched in the decoded text of the
generated tokens only (never the prompt), checked after every token, so the
first match is found at the token that completes it.

A model's vocabulary may be padded past its tokenizer's (a sentencepiece
vocab rounded up): such ids are sampled like any other (log-probs stay the
model's full-vocabulary ones) but have no text, so `decode_text` leaves them
out of the text; the token ids themselves are always returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from cwm_jax.tokenizer.base import Tokenizer

STOP_TOKEN = "stop_token"
STOP_STRING = "stop_string"
LENGTH = "length"
FINISH_REASONS = (STOP_TOKEN, STOP_STRING, LENGTH)


def decode_text(tokenizer: Tokenizer, tokens: Sequence[int]) -> str:
  """The text of `tokens`, without ids the tokenizer does not have."""
  n = tokenizer.vocab_size
  return tokenizer.decode([t for t in tokens if t < n])


class StopCriteria:
  """Checks one row's generated tokens after each new token."""

  def __init__(self, max_new_tokens: int, stop_token_ids: Sequence[int] = (),
               stop_strings: Sequence[str] = (), tokenizer: Optional[Tokenizer] = None):
    self.max_new_tokens = max_new_tokens
    self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
    self.stop_strings = tuple(stop_strings)
    self.tokenizer = tokenizer
    self._longest = max((len(s) for s in self.stop_strings), default=0)

  def check(self, tokens: list[int], checked_chars: int) -> tuple[Optional[str], int]:
    """(finish reason or None, characters of text already searched).

    `checked_chars` lets each call search only the text that new tokens could
    have completed a stop string in.
    """
    if tokens[-1] in self.stop_token_ids:
      return STOP_TOKEN, checked_chars
    if self.stop_strings:
      text = decode_text(self.tokenizer, tokens)
      # A token may rewrite the tail of the text (an incomplete UTF-8 sequence
      # becoming a character), so look back a little before `checked_chars`.
      start = max(0, checked_chars - self._longest - 4)
      if any(s in text[start:] for s in self.stop_strings):
        return STOP_STRING, len(text)
      checked_chars = len(text)
    if len(tokens) >= self.max_new_tokens:
      return LENGTH, checked_chars
    return None, checked_chars
