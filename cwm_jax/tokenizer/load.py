"""`load_tokenizer(path)`: the right `Tokenizer` for a file, told apart by its content.

A tiktoken rank file is text whose first line is "BASE64_TOKEN RANK"; a
sentencepiece model is a binary protobuf. A directory is searched for
`tokenizer.model` (the layout of the HF checkpoints). The name "llama3" stands for
the Llama-3 rank file of the `llama-models` package (`llama3_file.py`).
"""

from __future__ import annotations

import os
import re

from cwm_jax.tokenizer.base import Tokenizer
from cwm_jax.tokenizer.cwm_tiktoken import CwmTiktokenTokenizer
from cwm_jax.tokenizer.llama3_file import LLAMA3, llama3_rank_file
from cwm_jax.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer

_RANK_LINE_RE = re.compile(rb"[A-Za-z0-9+/]+={0,2} \d+\r?\n")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """The tokenizer in `path`: a tiktoken rank file, a sentencepiece model, or a directory.

  `load_tokenizer("llama3")` (exactly that string) loads the Llama-3 rank file
  installed by `pip install llama-models==0.3.0`: the CWM BPE with the CWM special
  tokens, for real-vocabulary data without the CWM checkpoint. The package is only
  located, never imported; if it is missing, ModuleNotFoundError says what to install.
  A local file or directory called "llama3" is read as `"./llama3"` or a `Path`.
  """
  if isinstance(path, str) and path == LLAMA3:
    return CwmTiktokenTokenizer(llama3_rank_file())
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, "tokenizer.model")
  try:
    with open(path, "rb") as f:
      head = f.read(256)
  except FileNotFoundError:
    raise FileNotFoundError(f"Tokenizer file {path!r} does not exist.") from None
  if _RANK_LINE_RE.match(head):
    return CwmTiktokenTokenizer(path)
  if head[:1] == b"\x0a":  # protobuf field 1 (pieces), length-delimited
    try:
      return SentencePieceTokenizer(path)
    except ValueError as e:
      if "is not a sentencepiece model" not in str(e):
        raise
  raise ValueError(
      f"Tokenizer file {path!r} is neither a tiktoken rank file (lines 'BASE64_TOKEN RANK') "
      f"nor a sentencepiece model; its first bytes are {head[:24]!r}.")
