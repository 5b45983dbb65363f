"""Chat, reasoning, tool-call and trace-prompt formats (FORMATS.md), as text and as ids.

A dialog is a list of messages `{"role": "system"|"user"|"assistant"|"tool",
"content": str, "name": str (tool messages only), "train": bool (optional)}`.
Token layout, one message:

  <|start_header_id|> enc(ROLE) <|end_header_id|> enc("\\n\\n") enc(BODY) <|eot_id|>

with the pieces encoded separately, as the released CWM tokenizer does. Bodies are
user text: special-token strings inside them stay text. The `format_*` functions
return the same layout as one string with special-token strings, for inspection;
`encode(format_dialog(...), allow_special=True)` can differ from `encode_dialog`
only where BPE would merge across a piece boundary.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer.base import Tokenizer

ROLES = ("system", "user", "assistant", "tool")

DEFAULT_DESCRIPTION = "You are a helpful AI assistant."
_REASONING_FORMAT = (
    " You always reason before responding, using the following format:\n\n"
    "<think>\nyour internal reasoning\n</think>\nyour external response")
# The released model's reasoning-mode system prompt starts with exactly this.
REASONING_PREAMBLE = DEFAULT_DESCRIPTION + _REASONING_FORMAT
THINK_START = "<think>\n"  # the assistant-turn prefill in reasoning mode (plain text)
THINK_END = "</think>"

TOOL_CALL_RE = re.compile(r"<tool:\s([a-zA-Z_]+)>\n(.*?)\n</tool>", re.DOTALL)
_TOOL_NAME_RE = re.compile(r"[a-zA-Z_]+")


def system_prompt(*, reasoning: bool, description: str = DEFAULT_DESCRIPTION,
                  environment: str | None = None) -> str:
  """The CWM system prompt: description (+ the reasoning format), then `# Environment`.

  With the default description and `reasoning`, it starts with REASONING_PREAMBLE.
  Tool specs belong in `environment`.
  """
  prompt = description.strip()
  if not prompt:
    raise ValueError("system_prompt: description must not be empty.")
  if reasoning:
    prompt += _REASONING_FORMAT
  if environment is not None and environment.strip():
    prompt += "\n\n# Environment\n\n" + environment.strip()
  return prompt


# ---------------------------------------------------------------- dialogs


def _check_message(i: int, message: Mapping) -> tuple[str, str, str]:
  """-> (role, header text, body) of a valid message."""
  if not isinstance(message, Mapping):
    raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got "
                     f"{type(message).__name__}.")
  role = message.get("role")
  if role not in ROLES:
    raise ValueError(f"messages[{i}] has unknown role {role!r}: expected one of {ROLES}.")
  content = message.get("content")
  if not isinstance(content, str):
    raise ValueError(f"messages[{i}] ({role}) needs a str 'content', got {type(content).__name__}.")
  if role == "tool":
    name = message.get("name")
    if not isinstance(name, str) or not name.strip() or "\n" in name:
      raise ValueError(f"messages[{i}] has role 'tool' but no tool name: set 'name' (e.g. "
                       f"'python' or 'bash'), got {name!r}.")
    return role, f"tool: {name.strip()}", content  # tool outputs are not stripped
  return role, role, content.strip()


def _prompt_suffix(reasoning: bool) -> str:
  return st.START_HEADER + "assistant" + st.END_HEADER + "\n\n" + (THINK_START if reasoning else "")


def format_dialog(messages: Sequence[Mapping], *, add_generation_prompt: bool = False,
                  reasoning: bool = False) -> str:
  """The dialog as text with special-token strings (for inspection and logs).

  `reasoning` adds the `<think>\\n` prefill after the generation prompt; it does
  nothing without `add_generation_prompt`.
  """
  parts = [st.BOS]
  for i, message in enumerate(messages):
    _, header, body = _check_message(i, message)
    parts += [st.START_HEADER, header, st.END_HEADER, "\n\n", body, st.EOT]
  if add_generation_prompt:
    parts.append(_prompt_suffix(reasoning))
  return "".join(parts)


def encode_dialog_with_mask(tokenizer: Tokenizer, messages: Sequence[Mapping], *,
                            add_generation_prompt: bool = False, reasoning: bool = False,
                            train_roles: Sequence[str] = ("assistant",)
                            ) -> tuple[list[int], list[int]]:
  """Ids and a per-token SFT loss mask (1 = train on this token).

  The mask is 1 on the body and closing <|eot_id|> of each trained message: those
  whose role is in `train_roles`, or whose optional "train" key says so (midtraining
  masks observations per message). BOS, headers and the generation prompt are 0.
  """
  for role in train_roles:
    if role not in ROLES:
      raise ValueError(f"train_roles has unknown role {role!r}: expected some of {ROLES}.")
  ids, mask = [tokenizer.bos_id], [0]
  start, end = tokenizer.special_ids[st.START_HEADER], tokenizer.special_ids[st.END_HEADER]
  eot = tokenizer.special_ids[st.EOT]
  blank = tokenizer.encode("\n\n")
  for i, message in enumerate(messages):
    role, header, body = _check_message(i, message)
    header_ids = [start, *tokenizer.encode(header), end, *blank]
    body_ids = tokenizer.encode(body) + [eot]
    train = bool(message.get("train", role in train_roles))
    ids += header_ids + body_ids
    mask += [0] * len(header_ids) + [int(train)] * len(body_ids)
  if add_generation_prompt:
    prompt = [start, *tokenizer.encode("assistant"), end, *blank]
    if reasoning:
      prompt += tokenizer.encode(THINK_START)
    ids += prompt
    mask += [0] * len(prompt)
  return ids, mask


def encode_dialog(tokenizer: Tokenizer, messages: Sequence[Mapping], *,
                  add_generation_prompt: bool = False, reasoning: bool = False) -> list[int]:
  """Ids of a dialog (see the module docstring); `reasoning` as in `format_dialog`."""
  ids, _ = encode_dialog_with_mask(tokenizer, messages, add_generation_prompt=add_generation_prompt,
                                   reasoning=reasoning)
  return ids


# ---------------------------------------------------------------- tools and reasoning


class ToolCall(NamedTuple):
  name: str
  arguments: str


def format_tool_call(name: str, arguments: str) -> str:
  """`<tool: NAME>\\nARGUMENTS\\n</tool>`, as an assistant turn writes it."""
  if not isinstance(name, str) or not _TOOL_NAME_RE.fullmatch(name):
    raise ValueError(f"Tool name {name!r} must match [a-zA-Z_]+ (else the call cannot be parsed).")
  return f"<tool: {name}>\n{arguments}\n</tool>"


def parse_tool_calls(text: str) -> list[ToolCall]:
  """All tool calls in an assistant turn, in order."""
  return [ToolCall(m.group(1), m.group(2)) for m in TOOL_CALL_RE.finditer(text)]


def split_reasoning(text: str) -> tuple[str, str | None]:
  """An assistant turn -> (thinking, answer); answer is None unless exactly one `</think>`.

  A leading `<think>` (when the prefill is included in `text`) is dropped from the
  thinking; both parts are stripped of surrounding whitespace.
  """
  body = text.lstrip()
  if body.startswith(THINK_START.strip()):
    body = body[len(THINK_START.strip()):]
  if body.count(THINK_END) != 1:
    return body.strip(), None
  thinking, answer = body.split(THINK_END)
  return thinking.strip(), answer.strip()


# ---------------------------------------------------------------- execution traces


def format_trace_prompt(context: str) -> str:
  """`<|begin_of_text|><|trace_context_start|>CONTEXT<|frame_sep|>`."""
  return st.BOS + st.TRACE_CONTEXT_START + context + st.FRAME_SEP


def encode_trace_prompt(tokenizer: Tokenizer, context: str) -> list[int]:
  """Ids of `format_trace_prompt(context)`; CONTEXT is source text (specials stay text)."""
  sp = tokenizer.special_ids
  return [sp[st.BOS], sp[st.TRACE_CONTEXT_START], *tokenizer.encode(context), sp[st.FRAME_SEP]]
