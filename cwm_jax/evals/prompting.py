"""Prompt formats shared by the benchmarks, and the answer part of a completion.

- "plain": a base (pre-trained) model continues text: BOS + the benchmark's plain
  template.
- "chat": one user turn (FORMATS.md chat layout), the answer is the assistant turn.
- "reasoning": CWM's reasoning mode: the reasoning system prompt, the assistant
  turn prefilled with `<think>\\n`; the answer is the text after the single
  `</think>` (none: no answer).
"""

from __future__ import annotations

from collections.abc import Sequence

from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer.base import Tokenizer
from cwm_jax.tokenizer.formats import encode_dialog, split_reasoning, system_prompt

PROMPT_FORMATS = ("plain", "chat", "reasoning")


def check_format(prompt_format: str) -> str:
  if prompt_format not in PROMPT_FORMATS:
    raise ValueError(f"prompt_format={prompt_format!r}; expected one of {PROMPT_FORMATS}")
  return prompt_format


def encode_prompt(tokenizer: Tokenizer, prompt_format: str, *, user: str, plain: str
                  ) -> list[int]:
  """Ids of the prompt: `plain` text for "plain", the `user` message otherwise."""
  check_format(prompt_format)
  if prompt_format == "plain":
    return [tokenizer.bos_id, *tokenizer.encode(plain)]
  messages = []
  if prompt_format == "reasoning":
    messages.append({"role": "system", "content": system_prompt(reasoning=True)})
  messages.append({"role": "user", "content": user})
  return encode_dialog(tokenizer, messages, add_generation_prompt=True,
                       reasoning=prompt_format == "reasoning")


def cut_at(text: str, stops: Sequence[str]) -> str:
  """`text` up to (not including) the first occurrence of any of `stops`."""
  end = len(text)
  for stop in stops:
    if stop:
      i = text.find(stop)
      if i != -1:
        end = min(end, i)
  return text[:end]


def answer_text(prompt_format: str, completion: str) -> str | None:
  """The answer part of a completion (stop tokens removed); None when a reasoning-mode
  completion has no single `</think>`."""
  text = cut_at(completion, st.STOP_TOKENS)
  if prompt_format == "reasoning":
    return split_reasoning(text)[1]
  return text
