"""The CWM tokenizer: Llama-3 style tiktoken BPE read from a rank file.

The rank file (`tokenizer.model`) has one "BASE64_TOKEN RANK" line per mergeable
token. With n ranks, special token k (offset k in `special_tokens.SPECIAL_TOKENS`)
gets id n + k: for the released file (n = 128,000) that is 128000 + k as in
FORMATS.md; a small test or toy rank file keeps the same layout just after its
ranks, so vocab_size is always n + 256.

The file is parsed here rather than with `tiktoken.load.load_tiktoken_bpe`, which
caches files under /tmp keyed by *path* (a rewritten file at the same path would be
read stale) and reports malformed lines without their line number.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping

import tiktoken

from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer.base import Tokenizer

# Llama-3 pre-tokenisation (FORMATS.md).
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tiktoken gets slow (and can overflow its stack) on huge inputs and on very long
# runs of whitespace or non-whitespace, so longer inputs are encoded in pieces.
MAX_ENCODE_CHARS = 400_000
MAX_RUN_CHARS = 25_000

_RUNS_RE = re.compile(r"\s+|\S+")
# A cut just after "\n" is a pre-token boundary when the next newline-free run of
# whitespace ends in a non-space (Python's \s is a superset of the pattern's).
_CUT_OK_RE = re.compile(r"[^\S\r\n]*\S")


def load_rank_file(path: str | os.PathLike) -> dict[bytes, int]:
  """Reads "BASE64_TOKEN RANK" lines; ranks must be 0..n-1 and cover all 256 bytes."""
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise FileNotFoundError(f"tiktoken rank file {path!r} does not exist.") from None
  except IsADirectoryError:
    raise IsADirectoryError(f"tiktoken rank file {path!r} is a directory, expected a file.") from None

  ranks: dict[bytes, int] = {}
  for lineno, line in enumerate(data.splitlines(), start=1):
    if not line.strip():
      continue
    where = f"{path}, line {lineno}"
    parts = line.split()
    if len(parts) != 2 or not parts[1].isdigit():
      raise ValueError(f"{where}: expected 'BASE64_TOKEN RANK', got {line[:80]!r}.")
    try:
      token = base64.b64decode(parts[0], validate=True)
    except binascii.Error:
      raise ValueError(f"{where}: {parts[0][:80]!r} is not valid base64.") from None
    if not token:
      raise ValueError(f"{where}: empty token.")
    if token in ranks:
      raise ValueError(f"{where}: token {token!r} already has rank {ranks[token]}.")
    ranks[token] = int(parts[1])

  if not ranks:
    raise ValueError(f"tiktoken rank file {path!r} has no ranks.")
  n = len(ranks)
  if set(ranks.values()) != set(range(n)):
    missing = min(set(range(n)) - set(ranks.values()))
    raise ValueError(
        f"tiktoken rank file {path!r}: ranks must be 0..{n - 1} with no gaps or "
        f"repeats; rank {missing} is missing.")
  missing_bytes = [b for b in range(256) if bytes([b]) not in ranks]
  if missing_bytes:
    raise ValueError(
        f"tiktoken rank file {path!r}: every single byte must be a token; "
        f"{len(missing_bytes)} are missing (first: {missing_bytes[0]:#04x}).")
  return ranks


def split_for_encoding(text: str, max_chars: int = MAX_ENCODE_CHARS,
                       max_run: int = MAX_RUN_CHARS) -> list[str]:
  """Cuts text into pieces of <= max_chars with no whitespace/non-whitespace run > max_run.

  Pieces end, where possible, after a "\\n" followed by spaces/tabs (no newline)
  and then a non-space, e.g. before an indented line of code: no match of the
  Llama-3 pattern spans such a point, so encoding the pieces separately gives the
  same ids as encoding the whole text. Only a text with no such point in max_chars
  characters, or with a run longer than max_run, is cut elsewhere (as the Llama-3
  reference does).
  """
  pieces = []
  while len(text) > max_chars:
    cut = _safe_cut(text, max_chars)
    pieces.append(text[:cut])
    text = text[cut:]
  pieces.append(text)
  return [p for piece in pieces for p in _split_long_runs(piece, max_run)]


def _safe_cut(text: str, max_chars: int) -> int:
  j = text.rfind("\n", 0, max_chars)
  while j >= 0:
    if _CUT_OK_RE.match(text, j + 1):
      return j + 1
    j = text.rfind("\n", 0, j)
  return max_chars


def _split_long_runs(text: str, max_run: int) -> list[str]:
  if len(text) <= max_run:
    return [text]
  out, start = [], 0
  for m in _RUNS_RE.finditer(text):
    for cut in range(m.start() + max_run, m.end(), max_run):
      out.append(text[start:cut])
      start = cut
  out.append(text[start:])
  return out


class CwmTiktokenTokenizer(Tokenizer):
  """The CWM BPE tokenizer from a tiktoken rank file."""

  def __init__(self, path: str | os.PathLike, *, max_encode_chars: int = MAX_ENCODE_CHARS,
               max_run_chars: int = MAX_RUN_CHARS):
    self.path = os.fspath(path)
    ranks = load_rank_file(self.path)
    self.num_ranks = len(ranks)
    self._special_ids = {t: self.num_ranks + k for t, k in st.SPECIAL_OFFSETS.items()}
    self.encoding = tiktoken.Encoding(
        name=f"cwm:{os.path.basename(self.path)}",
        pat_str=PRETOKENIZE_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=self._special_ids,
    )
    self._max_encode_chars = max_encode_chars
    self._max_run_chars = max_run_chars

  def __repr__(self) -> str:
    return f"CwmTiktokenTokenizer({self.path!r}, vocab_size={self.vocab_size})"

  @property
  def special_ids(self) -> Mapping[str, int]:
    return self._special_ids

  @property
  def vocab_size(self) -> int:
    return self.num_ranks + st.NUM_SPECIAL_TOKENS

  def _encode_ordinary(self, text: str) -> list[int]:
    if len(text) <= min(self._max_encode_chars, self._max_run_chars):
      return self.encoding.encode_ordinary(text)
    ids = []
    for piece in split_for_encoding(text, self._max_encode_chars, self._max_run_chars):
      ids += self.encoding.encode_ordinary(piece)
    return ids

  def _decode_checked(self, ids: list[int]) -> str:
    return self.encoding.decode(ids)
