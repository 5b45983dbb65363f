"""The 256 CWM special tokens: names, offsets and ids (FORMATS.md).

Every special token has an *offset* in 0..255. In the released tokenizer
(128,000 mergeable ranks) its id is 128000 + offset. Offsets that FORMATS.md does
not name are `<|reserved_special_token_K|>` with K = offset, exactly as the released
CWM tokenizer names them (so 128002 is `<|reserved_special_token_2|>` and 128255 is
`<|reserved_special_token_255|>`); ids therefore agree with the HF checkpoints.
"""

from __future__ import annotations

import re

NUM_SPECIAL_TOKENS = 256
CWM_NUM_RANKS = 128_000  # mergeable ranks in the released `tokenizer.model`

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOM = "<|eom_id|>"
EOT = "<|eot_id|>"
FRAME_SEP = "<|frame_sep|>"
ACTION_SEP = "<|action_sep|>"
RETURN_SEP = "<|return_sep|>"
CALL_SEP = "<|call_sep|>"
LINE_SEP = "<|line_sep|>"
EXCEPTION_SEP = "<|exception_sep|>"
ARG_SEP = "<|arg_sep|>"
TRACE_CONTEXT_START = "<|trace_context_start|>"
THINKING_START = "<|reasoning_thinking_start|>"
THINKING_END = "<|reasoning_thinking_end|>"

# Named tokens -> offset (id - 128000 in the released tokenizer).
NAMED_OFFSETS: dict[str, int] = {
    BOS: 0,
    EOS: 1,
    PAD: 4,
    START_HEADER: 6,
    END_HEADER: 7,
    EOM: 8,
    EOT: 9,
    FRAME_SEP: 100,
    ACTION_SEP: 101,
    RETURN_SEP: 102,
    CALL_SEP: 103,
    LINE_SEP: 104,
    EXCEPTION_SEP: 105,
    ARG_SEP: 106,
    TRACE_CONTEXT_START: 107,
    THINKING_START: 120,
    THINKING_END: 121,
}

# Generation stops at any of these (released ids 128001, 128008, 128009).
STOP_TOKENS: tuple[str, ...] = (EOS, EOM, EOT)


def reserved_token(k: int) -> str:
  return f"<|reserved_special_token_{k}|>"


def _all_special_tokens() -> tuple[str, ...]:
  by_offset = {offset: token for token, offset in NAMED_OFFSETS.items()}
  return tuple(by_offset.get(k, reserved_token(k)) for k in range(NUM_SPECIAL_TOKENS))


# All 256 token strings, indexed by offset.
SPECIAL_TOKENS: tuple[str, ...] = _all_special_tokens()
SPECIAL_OFFSETS: dict[str, int] = {token: k for k, token in enumerate(SPECIAL_TOKENS)}

# Ids in the released CWM tokenizer.
CWM_SPECIAL_IDS: dict[str, int] = {t: CWM_NUM_RANKS + k for t, k in SPECIAL_OFFSETS.items()}

# Anything shaped like a special token; membership in SPECIAL_OFFSETS decides.
SPECIAL_TOKEN_RE = re.compile(r"<\|[A-Za-z0-9_]+\|>")


def canonical_special(name_or_string: str) -> str:
  """"eot_id" or "<|eot_id|>" -> "<|eot_id|>"; ValueError for an unknown name."""
  token = name_or_string
  if not (token.startswith("<|") and token.endswith("|>")):
    token = f"<|{token}|>"
  if token not in SPECIAL_OFFSETS:
    raise ValueError(
        f"Unknown special token {name_or_string!r}: expected one of the 256 CWM special "
        f"tokens, e.g. {EOT!r} or 'eot_id', or {reserved_token(3)!r}.")
  return token
