"""Chat on top of `Sampler`: CWM's dialog format, reasoning mode and tool calls (FORMATS.md).

    result = chat(sampler, tokenizer, [{"role": "user", "content": "Sort [3, 1, 2]"}],
                  reasoning=True, max_new_tokens=512)
    result.reasoning, result.answer, result.tool_calls

The prompt is `encode_dialog(..., add_generation_prompt=True)`; in reasoning
mode the assistant turn is prefilled with `<think>\\n` and, when the dialog has
no system message, the released model's reasoning system prompt is added
(with `environment`, e.g. tool specs, under `# Environment`). Generation stops
at the tokenizer's stop tokens (end_of_text, eom_id, eot_id) and at any
`stop_strings` (e.g. "</tool>" to end a turn at its first tool call).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Optional, Union

import numpy as np

from cwm_jax.inference.sampler import GREEDY, Sampler
from cwm_jax.inference.sampling import SamplingConfig
from cwm_jax.inference.stopping import STOP_STRING, STOP_TOKEN, decode_text
from cwm_jax.tokenizer.base import Tokenizer
from cwm_jax.tokenizer.formats import (THINK_START, ToolCall, encode_dialog, parse_tool_calls,
                                       split_reasoning, system_prompt)


@dataclasses.dataclass(frozen=True)
class ChatResult:
  """One assistant turn.

  text: the generated turn (after the prompt, so without the `<think>\\n`
    prefill), without its stop token, cut just after a matched stop string.
  reasoning: the thinking before `</think>` (reasoning mode), else None.
  answer: reasoning mode: the text after the single `</think>`, None if there
    is not exactly one; otherwise the stripped text.
  tool_calls: `<tool: NAME>` blocks in the answer, in order.
  tokens / logprobs / finish_reason: as `Sampler.generate` returns them.
  """

  text: str
  reasoning: Optional[str]
  answer: Optional[str]
  tool_calls: list[ToolCall]
  tokens: list[int]
  logprobs: np.ndarray
  finish_reason: str

  def as_message(self, *, reasoning: bool) -> dict:
    """The turn as a dialog message (with its `<think>\\n` prefill in reasoning mode)."""
    return {"role": "assistant", "content": (THINK_START if reasoning else "") + self.text}


def tool_message(name: str, content: str) -> dict:
  """A tool result message (`tool: NAME` role) to append after a tool call."""
  return {"role": "tool", "name": name, "content": content}


def chat_prompt(tokenizer: Tokenizer, messages: Sequence[Mapping], *, reasoning: bool = False,
                environment: Optional[str] = None) -> list[int]:
  """Prompt ids for the next assistant turn of `messages`.

  Without a leading system message, one is added when `reasoning` or
  `environment` asks for it (`formats.system_prompt`).
  """
  messages = list(messages)
  has_system = bool(messages) and isinstance(messages[0], Mapping) and \
      messages[0].get("role") == "system"
  if has_system and environment is not None:
    raise ValueError("chat: the dialog already starts with a system message; put the "
                     "environment in it instead of passing environment=.")
  if not has_system and (reasoning or environment is not None):
    messages.insert(0, {"role": "system",
                        "content": system_prompt(reasoning=reasoning, environment=environment)})
  if not messages or (isinstance(messages[-1], Mapping) and
                      messages[-1].get("role") == "assistant"):
    raise ValueError("chat: the dialog must end with a user or tool message (the assistant "
                     "replies next).")
  return encode_dialog(tokenizer, messages, add_generation_prompt=True, reasoning=reasoning)


def parse_reply(text: str, *, reasoning: bool) -> tuple[Optional[str], Optional[str], list[ToolCall]]:
  """(reasoning, answer, tool_calls) of an assistant turn's text."""
  if not reasoning:
    return None, text.strip(), parse_tool_calls(text)
  thinking, answer = split_reasoning(text)
  return thinking, answer, parse_tool_calls(answer) if answer is not None else []


def _reply_text(tokenizer: Tokenizer, tokens: list[int], finish_reason: str,
                stop_strings: Sequence[str]) -> str:
  if finish_reason == STOP_TOKEN:
    tokens = tokens[:-1]
  text = decode_text(tokenizer, tokens)
  if finish_reason == STOP_STRING:
    ends = [text.find(s) + len(s) for s in stop_strings if s in text]
    text = text[:min(ends)]
  return text


def chat_batch(sampler: Sampler, tokenizer: Tokenizer, dialogs: Sequence[Sequence[Mapping]], *,
               reasoning: bool = False, environment: Optional[str] = None,
               max_new_tokens: int = 1024, sampling: SamplingConfig = GREEDY,
               stop_strings: Sequence[str] = (), seed: Union[int, Sequence[int]] = 0
               ) -> list[ChatResult]:
  """The next assistant turn of each dialog, generated as one batch."""
  prompts = [chat_prompt(tokenizer, d, reasoning=reasoning, environment=environment)
             for d in dialogs]
  out = sampler.generate(prompts, max_new_tokens=max_new_tokens, sampling=sampling,
                         stop_token_ids=tokenizer.stop_ids, stop_strings=stop_strings,
                         tokenizer=tokenizer, seed=seed)
  results = []
  for tokens, logprobs, reason in zip(out.tokens, out.logprobs, out.finish_reasons):
    text = _reply_text(tokenizer, tokens, reason, stop_strings)
    thinking, answer, calls = parse_reply(text, reasoning=reasoning)
    results.append(ChatResult(text, thinking, answer, calls, tokens, logprobs, reason))
  return results


def chat(sampler: Sampler, tokenizer: Tokenizer, messages: Sequence[Mapping], **kwargs
         ) -> ChatResult:
  """The next assistant turn of one dialog; keyword arguments as `chat_batch`."""
  return chat_batch(sampler, tokenizer, [messages], **kwargs)[0]
