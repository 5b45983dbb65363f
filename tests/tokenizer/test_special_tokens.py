"""The special-token table against FORMATS.md."""

import pytest

from cwm_jax.tokenizer import special_tokens as st

# Copied from the FORMATS.md table.
FORMATS_TABLE = {
    "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|pad|>": 128004,
    "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eom_id|>": 128008,
    "<|eot_id|>": 128009, "<|frame_sep|>": 128100, "<|action_sep|>": 128101,
    "<|return_sep|>": 128102, "<|call_sep|>": 128103, "<|line_sep|>": 128104,
    "<|exception_sep|>": 128105, "<|arg_sep|>": 128106, "<|trace_context_start|>": 128107,
    "<|reasoning_thinking_start|>": 128120, "<|reasoning_thinking_end|>": 128121,
}


def test_named_ids_match_formats():
  for token, token_id in FORMATS_TABLE.items():
    assert st.CWM_SPECIAL_IDS[token] == token_id


def test_table_is_complete_and_reserved_numbered_by_offset():
  assert len(st.SPECIAL_TOKENS) == len(set(st.SPECIAL_TOKENS)) == 256
  assert sorted(st.CWM_SPECIAL_IDS.values()) == list(range(128000, 128256))
  for token, token_id in st.CWM_SPECIAL_IDS.items():
    if token not in FORMATS_TABLE:
      assert token == f"<|reserved_special_token_{token_id - 128000}|>"
  assert st.SPECIAL_TOKENS[2] == "<|reserved_special_token_2|>"
  assert st.SPECIAL_TOKENS[255] == "<|reserved_special_token_255|>"


def test_constants_and_stop_tokens():
  assert [st.CWM_SPECIAL_IDS[t] for t in st.STOP_TOKENS] == [128001, 128008, 128009]
  constants = [st.BOS, st.EOS, st.PAD, st.START_HEADER, st.END_HEADER, st.EOM, st.EOT,
               st.FRAME_SEP, st.ACTION_SEP, st.RETURN_SEP, st.CALL_SEP, st.LINE_SEP,
               st.EXCEPTION_SEP, st.ARG_SEP, st.TRACE_CONTEXT_START, st.THINKING_START,
               st.THINKING_END]
  assert sorted(constants) == sorted(FORMATS_TABLE)


@pytest.mark.parametrize("name", ["eot_id", "<|eot_id|>"])
def test_canonical_special(name):
  assert st.canonical_special(name) == "<|eot_id|>"


def test_canonical_special_unknown():
  with pytest.raises(ValueError, match="Unknown special token 'eot'"):
    st.canonical_special("eot")
