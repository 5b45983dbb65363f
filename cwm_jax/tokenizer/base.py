"""`Tokenizer`: the one interface of the CWM tiktoken and the sentencepiece tokenizers.

Both expose the same 256 special tokens by string (FORMATS.md), so formatters,
data pipelines and samplers never ask which implementation they hold. An
implementation supplies `special_ids`, `vocab_size`, `_encode_ordinary` (text with
special-token strings treated as plain text) and `_decode_checked`.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Iterable, Mapping

from cwm_jax.tokenizer import special_tokens as st


class Tokenizer(abc.ABC):
  """Text <-> token ids with the CWM special tokens."""

  @property
  @abc.abstractmethod
  def special_ids(self) -> Mapping[str, int]:
    """All 256 special token strings ("<|eot_id|>") -> ids."""

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids; valid ids are 0..vocab_size-1."""

  @abc.abstractmethod
  def _encode_ordinary(self, text: str) -> list[int]:
    """Encodes text in which special-token strings are plain text."""

  @abc.abstractmethod
  def _decode_checked(self, ids: list[int]) -> str:
    """Decodes ids already checked to lie in range; specials render as strings."""

  def encode(self, text: str, *, bos: bool = False, eos: bool = False,
             allow_special: bool = False) -> list[int]:
    """Text -> ids, with BOS/EOS added on request.

    Special-token strings in `text` (e.g. "<|eot_id|>") are ordinary text unless
    `allow_special`, in which case each one becomes its special id.
    """
    if not isinstance(text, str):
      raise TypeError(f"Tokenizer.encode expects str, got {type(text).__name__}.")
    ids = [self.bos_id] if bos else []
    if allow_special:
      specials = self.special_ids
      start = 0
      for m in st.SPECIAL_TOKEN_RE.finditer(text):
        if m.group() in specials:
          ids += self._encode_ordinary(text[start:m.start()])
          ids.append(specials[m.group()])
          start = m.end()
      ids += self._encode_ordinary(text[start:])
    else:
      ids += self._encode_ordinary(text)
    if eos:
      ids.append(self.eos_id)
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text; special ids render as their token strings."""
    ids = [int(i) for i in ids]
    n = self.vocab_size
    if ids and (min(ids) < 0 or max(ids) >= n):
      bad = next(i for i in ids if not 0 <= i < n)
      raise ValueError(f"Token id {bad} is out of range: valid ids are 0..{n - 1}.")
    return self._decode_checked(ids)

  def token_id(self, name_or_string: str) -> int:
    """The id of a special token, given as "<|eot_id|>" or as "eot_id"."""
    return self.special_ids[st.canonical_special(name_or_string)]

  def is_special(self, token_id: int) -> bool:
    return int(token_id) in self._special_id_set

  @functools.cached_property
  def _special_id_set(self) -> frozenset[int]:
    return frozenset(self.special_ids.values())

  @property
  def bos_id(self) -> int:
    return self.special_ids[st.BOS]

  @property
  def eos_id(self) -> int:
    return self.special_ids[st.EOS]

  @property
  def pad_id(self) -> int:
    return self.special_ids[st.PAD]

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """Generation stops at any of these: end_of_text, eom_id, eot_id."""
    return tuple(self.special_ids[t] for t in st.STOP_TOKENS)
