"""Tokenizers (the CWM tiktoken BPE, project-trained sentencepiece) and chat/trace formats."""

from cwm_jax.tokenizer import special_tokens
from cwm_jax.tokenizer.base import Tokenizer
from cwm_jax.tokenizer.bpe_trainer import train_bpe_ranks, write_rank_file
from cwm_jax.tokenizer.cwm_tiktoken import PRETOKENIZE_PATTERN, CwmTiktokenTokenizer, load_rank_file
from cwm_jax.tokenizer.formats import (
    REASONING_PREAMBLE, THINK_END, THINK_START, ToolCall, encode_dialog, encode_dialog_with_mask,
    encode_trace_prompt, format_dialog, format_tool_call, format_trace_prompt, parse_tool_calls,
    split_reasoning, system_prompt)
from cwm_jax.tokenizer.llama3_file import LLAMA3, llama3_rank_file
from cwm_jax.tokenizer.load import load_tokenizer
from cwm_jax.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece
from cwm_jax.tokenizer.special_tokens import CWM_SPECIAL_IDS, SPECIAL_TOKENS, STOP_TOKENS
