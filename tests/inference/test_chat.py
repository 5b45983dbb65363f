"""Chat helpers: prompts follow FORMATS.md via `tokenizer.formats`, replies are
split into reasoning / answer / tool calls, and `chat` is `Sampler.generate` on
that prompt with the tokenizer's stop tokens."""

import numpy as np
import pytest

from cwm_jax.inference import Sampler
from cwm_jax.inference.chat import (ChatResult, chat, chat_batch, chat_prompt, parse_reply,
                                    tool_message)
from cwm_jax.tokenizer import REASONING_PREAMBLE, ToolCall, encode_dialog, format_tool_call
from cwm_jax.tokenizer import special_tokens as st

USER = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def sampler(model):
  cfg, params = model
  return Sampler(cfg, params, max_len=256)


def test_prompt_plain_and_reasoning(tokenizer):
  assert chat_prompt(tokenizer, USER) == encode_dialog(tokenizer, USER, add_generation_prompt=True)
  ids = chat_prompt(tokenizer, USER, reasoning=True, environment="python: runs code")
  text = tokenizer.decode(ids)
  assert text.startswith(st.BOS + st.START_HEADER + "system" + st.END_HEADER + "\n\n" +
                         REASONING_PREAMBLE)
  assert "\n\n# Environment\n\npython: runs code" + st.EOT in text
  assert text.endswith(st.START_HEADER + "assistant" + st.END_HEADER + "\n\n<think>\n")
  # A dialog's own system message is kept as is.
  own = [{"role": "system", "content": "Be brief."}] + USER
  assert chat_prompt(tokenizer, own, reasoning=True) == encode_dialog(
      tokenizer, own, add_generation_prompt=True, reasoning=True)


def test_prompt_errors(tokenizer):
  with pytest.raises(ValueError, match="must end with a user or tool message"):
    chat_prompt(tokenizer, USER + [{"role": "assistant", "content": "4"}])
  with pytest.raises(ValueError, match="already starts with a system message"):
    chat_prompt(tokenizer, [{"role": "system", "content": "x"}] + USER, environment="tools")
  with pytest.raises(ValueError, match="unknown role"):
    chat_prompt(tokenizer, [{"role": "robot", "content": "x"}])


def test_parse_reply():
  call = format_tool_call("python", "print(2 + 2)")
  thinking, answer, calls = parse_reply(f"I should run it.\n</think>\nLet me check.\n{call}",
                                        reasoning=True)
  assert thinking == "I should run it."
  assert answer == f"Let me check.\n{call}"
  assert calls == [ToolCall("python", "print(2 + 2)")]
  # No single </think>: no answer, and tool calls in the thinking do not count.
  assert parse_reply(f"hmm {call}", reasoning=True) == (f"hmm {call}", None, [])
  assert parse_reply("a</think>b</think>c", reasoning=True)[1] is None
  assert parse_reply(f" 4 \n{call}", reasoning=False) == (
      None, f"4 \n{call}", [ToolCall("python", "print(2 + 2)")])


def test_chat_is_generate_on_the_dialog_prompt(sampler, tokenizer):
  dialogs = [USER, USER + [{"role": "assistant", "content": format_tool_call("bash", "ls")},
                           tool_message("bash", "a.py\n")]]
  results = chat_batch(sampler, tokenizer, dialogs, reasoning=True, max_new_tokens=24)
  prompts = [chat_prompt(tokenizer, d, reasoning=True) for d in dialogs]
  ref = sampler.generate(prompts, max_new_tokens=24, stop_token_ids=tokenizer.stop_ids,
                         tokenizer=tokenizer)
  for r, tokens, logprobs, reason in zip(results, ref.tokens, ref.logprobs, ref.finish_reasons):
    assert isinstance(r, ChatResult)
    assert r.tokens == tokens and r.finish_reason == reason
    np.testing.assert_array_equal(r.logprobs, logprobs)
    body = tokens[:-1] if reason == "stop_token" else tokens
    assert r.text == tokenizer.decode([t for t in body if t < tokenizer.vocab_size])
    assert (r.reasoning, r.answer, r.tool_calls) == parse_reply(r.text, reasoning=True)
    assert r.as_message(reasoning=True)["content"] == "<think>\n" + r.text


def test_chat_text_ends_at_the_stop_string(sampler, tokenizer):
  free = chat(sampler, tokenizer, USER, max_new_tokens=20)
  stop = free.text[8:11]
  stopped = chat(sampler, tokenizer, USER, max_new_tokens=20, stop_strings=[stop])
  assert stopped.finish_reason == "stop_string"
  assert stopped.text.endswith(stop) and stopped.text.count(stop) == 1
  assert free.text.startswith(stopped.text)
