"""Sentencepiece tokenizers trained by the project for small experiments.

`train_sentencepiece` makes models that expose the 256 CWM special tokens as
user-defined symbols (piece id 1 + offset; id 0 is <unk>) and round-trip any text
exactly, code included:
  - input is fed as chunks of whole lines *with* their newlines (sentencepiece
    would otherwise split the corpus on them), and "\\n" and "\\t" are user-defined
    symbols, so pieces never span a line break;
  - identity normalisation, no whitespace collapsing, no dummy prefix, whitespace-
    only pieces allowed (indentation runs are learned), byte fallback for any
    character not in the vocabulary.
`SentencePieceTokenizer` adds two things sentencepiece cannot do by itself: special-
token strings in ordinary text stay text (sentencepiece matches user-defined
symbols anywhere, so the text is cut just after the "<" of each such string), and
a literal "\u2581" (sentencepiece's own space marker) is encoded as its UTF-8
byte pieces so that it does not decode to a space.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator, Mapping

import sentencepiece as spm

from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer.base import Tokenizer

CODE_SYMBOLS = ("\n", "\t")
SPACE_MARKER = "\u2581"
# Piece ids: <unk>, then the specials, then CODE_SYMBOLS and extra symbols, then 256 bytes.
_NUM_FIXED_PIECES = 1 + st.NUM_SPECIAL_TOKENS + 256

_PROTECT_RE = re.compile(st.SPECIAL_TOKEN_RE.pattern + "|" + SPACE_MARKER)


def train_sentencepiece(sources: Iterable[str | os.PathLike], model_prefix: str | os.PathLike,
                        vocab_size: int, *, model_type: str = "bpe",
                        extra_symbols: Iterable[str] = (), chunk_chars: int = 2048,
                        num_threads: int = 1, **trainer_kwargs) -> str:
  """Trains a model on texts (`str`) and/or UTF-8 files (`pathlib.Path`, any PathLike).

  Writes `{model_prefix}.model` and `.vocab` and returns the model path. `vocab_size`
  counts <unk>, the 256 specials, the code symbols and the 256 byte pieces, so it
  must exceed 515 + len(extra_symbols). `trainer_kwargs` go to
  `sentencepiece.SentencePieceTrainer.train` and override the defaults here.
  """
  extra_symbols = tuple(extra_symbols)
  for sym in extra_symbols:
    if not sym or " " in sym:
      raise ValueError(f"extra symbol {sym!r}: must be non-empty and contain no spaces "
                       f"(sentencepiece never matches those; indentation runs are learned).")
  symbols = list(st.SPECIAL_TOKENS) + [s for s in dict.fromkeys(CODE_SYMBOLS + extra_symbols)
                                       if s not in st.SPECIAL_OFFSETS]
  minimum = _NUM_FIXED_PIECES + len(symbols) - st.NUM_SPECIAL_TOKENS
  if vocab_size <= minimum:
    raise ValueError(
        f"vocab_size={vocab_size} is too small: <unk>, the 256 special tokens, "
        f"{len(symbols) - st.NUM_SPECIAL_TOKENS} code/extra symbols and 256 byte pieces "
        f"already take {minimum} ids; use a vocab_size well above that (e.g. {minimum + 500}).")
  sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
  for s in sources:
    if isinstance(s, str) and len(s) < 4096 and "\n" not in s and os.path.isfile(s):
      raise ValueError(
          f"train_sentencepiece got the string {s!r}, which names a file: strings are "
          f"training *text*; pass pathlib.Path({s!r}) to train on the file.")
  model_prefix = os.fspath(model_prefix)
  parent = os.path.dirname(model_prefix)
  if parent:
    os.makedirs(parent, exist_ok=True)

  options = dict(
      model_type=model_type,
      vocab_size=vocab_size,
      user_defined_symbols=symbols,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      split_by_whitespace=True,
      allow_whitespace_only_pieces=True,
      split_digits=True,
      byte_fallback=True,
      character_coverage=1.0,
      unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
      max_sentence_length=4 * chunk_chars + 16,  # bytes; a chunk has <= chunk_chars chars
      num_threads=num_threads,
      minloglevel=2,
  )
  options.update(trainer_kwargs)
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_training_chunks(sources, chunk_chars),
        model_prefix=model_prefix, **options)
  except RuntimeError as e:
    raise ValueError(f"sentencepiece training of {model_prefix}.model failed: {e}") from e
  return model_prefix + ".model"


def _training_chunks(sources: list, chunk_chars: int) -> Iterator[str]:
  for source in sources:
    if isinstance(source, str):
      yield from _chunk_lines(io.StringIO(source, newline=""), chunk_chars)
    else:
      path = os.fspath(source)
      try:
        with open(path, encoding="utf-8", newline="") as f:
          yield from _chunk_lines(f, chunk_chars)
      except FileNotFoundError:
        raise FileNotFoundError(f"sentencepiece training file {path!r} does not exist.") from None
      except UnicodeDecodeError as e:
        raise ValueError(f"sentencepiece training file {path!r} is not UTF-8: {e}") from None


def _chunk_lines(lines: Iterable[str], chunk_chars: int) -> Iterator[str]:
  """Whole lines, newlines kept, grouped into chunks of <= chunk_chars characters."""
  buf, size = [], 0
  for line in lines:
    while len(line) > chunk_chars:  # only pathological lines are cut
      if buf:
        yield "".join(buf)
        buf, size = [], 0
      yield line[:chunk_chars]
      line = line[chunk_chars:]
    if size + len(line) > chunk_chars:
      yield "".join(buf)
      buf, size = [], 0
    buf.append(line)
    size += len(line)
  if size:
    yield "".join(buf)


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model made by `train_sentencepiece`, behind the `Tokenizer` API."""

  def __init__(self, model_path: str | os.PathLike):
    self.path = os.fspath(model_path)
    try:
      with open(self.path, "rb") as f:
        proto = f.read()
    except FileNotFoundError:
      raise FileNotFoundError(f"sentencepiece model {self.path!r} does not exist.") from None
    self._init_from_proto(proto)

  def _init_from_proto(self, proto: bytes) -> None:
    self._proto = proto
    self.processor = spm.SentencePieceProcessor()
    try:
      self.processor.LoadFromSerializedProto(proto)
    except RuntimeError as e:
      raise ValueError(f"{self.path!r} is not a sentencepiece model: {e}") from None
    sp = self.processor
    ids = {t: sp.piece_to_id(t) for t in st.SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if sp.id_to_piece(i) != t]
    if missing:
      raise ValueError(
          f"sentencepiece model {self.path!r} lacks {len(missing)} of the 256 CWM special "
          f"tokens (first: {missing[0]!r}); train it with "
          f"cwm_jax.tokenizer.train_sentencepiece.")
    self._special_ids = ids
    byte_ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in SPACE_MARKER.encode("utf-8")]
    self._marker_ids = byte_ids if all(sp.is_byte(i) for i in byte_ids) else None

  def __getstate__(self):
    return {"path": self.path, "proto": self._proto}

  def __setstate__(self, state):
    self.path = state["path"]
    self._init_from_proto(state["proto"])

  def __repr__(self) -> str:
    return f"SentencePieceTokenizer({self.path!r}, vocab_size={self.vocab_size})"

  @property
  def special_ids(self) -> Mapping[str, int]:
    return self._special_ids

  @property
  def vocab_size(self) -> int:
    return self.processor.get_piece_size()

  def _encode_ordinary(self, text: str) -> list[int]:
    encode = self.processor.encode
    if "<|" not in text and SPACE_MARKER not in text:
      return encode(text)
    ids, start = [], 0
    for m in _PROTECT_RE.finditer(text):
      if m.group() == SPACE_MARKER and self._marker_ids is not None:
        ids += encode(text[start:m.start()]) + self._marker_ids
        start = m.end()
      elif m.group() != SPACE_MARKER:
        # Cutting after "<" keeps sentencepiece from matching the whole symbol.
        ids += encode(text[start:m.start() + 1])
        start = m.start() + 1
    return ids + encode(text[start:])

  def _decode_checked(self, ids: list[int]) -> str:
    return self.processor.decode(ids)
