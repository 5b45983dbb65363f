"""Small tokenizers built in seconds, for tests and CPU toy runs (nothing downloaded).

`build_toy_tiktoken` trains a byte-level BPE rank file with the CWM layout (specials
at num_ranks + offset), `build_toy_sentencepiece` a sentencepiece model with the same
special tokens. Both learn from `toy_corpus()`: Python standard-library source read
from disk plus a little multilingual text.
"""

from __future__ import annotations

import importlib
import inspect
import os

from cwm_jax.tokenizer.bpe_trainer import train_bpe_ranks, write_rank_file
from cwm_jax.tokenizer.cwm_tiktoken import CwmTiktokenTokenizer
from cwm_jax.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece

_CORPUS_MODULES = ("textwrap", "json.decoder", "json.encoder", "heapq", "bisect", "fnmatch")
_PROSE = (
    "The quick brown fox jumps over the lazy dog. I'm sure they'll say it's 12345 times!\n"
    "Les élèves étudient le français; naïve café déjà vu.\n"
    "Числа и буквы: один, два, три.\n"
    "日本語のテキストと中文文本。\n"
    "Emoji 🙂🚀 and symbols ∑ ∫ → ≤ ≥.\n"
)


def toy_corpus() -> str:
  """A few tens of KB of real Python source plus some prose in several scripts."""
  sources = [inspect.getsource(importlib.import_module(m)) for m in _CORPUS_MODULES]
  return "".join(sources) + _PROSE * 4


def build_toy_tiktoken(directory: str | os.PathLike, num_merges: int = 400) -> str:
  """Writes `directory/toy_tiktoken.model` (256 bytes + merges) and returns its path."""
  path = os.path.join(os.fspath(directory), "toy_tiktoken.model")
  write_rank_file(train_bpe_ranks([toy_corpus()], num_merges), path)
  return path


def build_toy_sentencepiece(directory: str | os.PathLike, vocab_size: int = 1024,
                            model_type: str = "bpe") -> str:
  """Writes `directory/toy_sp.model` and returns its path."""
  prefix = os.path.join(os.fspath(directory), "toy_sp")
  return train_sentencepiece([toy_corpus()], prefix, vocab_size, model_type=model_type)


def toy_tiktoken_tokenizer(directory: str | os.PathLike, **kwargs) -> CwmTiktokenTokenizer:
  return CwmTiktokenTokenizer(build_toy_tiktoken(directory, **kwargs))


def toy_sentencepiece_tokenizer(directory: str | os.PathLike, **kwargs) -> SentencePieceTokenizer:
  return SentencePieceTokenizer(build_toy_sentencepiece(directory, **kwargs))
