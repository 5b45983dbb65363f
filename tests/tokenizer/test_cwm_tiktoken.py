"""The CWM tiktoken tokenizer on small rank files, against a pure-Python reference."""

import base64
import pickle
import random

import pytest
import regex

from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer import toy
from cwm_jax.tokenizer.bpe_trainer import train_bpe_ranks, write_rank_file
from cwm_jax.tokenizer.cwm_tiktoken import (PRETOKENIZE_PATTERN, CwmTiktokenTokenizer,
                                            load_rank_file, split_for_encoding)

# The pattern as printed in FORMATS.md.
FORMATS_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
                   r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

TEXTS = [
    "",
    "hello world",
    "I'm 12345 cats!!\n\n  x",
    "def f(array):\n    n = array.pop()\n\n\treturn [n, n]  # done\n",
    "  leading spaces and trailing   \n\n\n",
    "Ünïcödé — 日本語 🙂🚀 ∑x≤3 \r\n\x00\x7f",
    "THEY'LL say It'S 'RE-done 1234567 ١٢٣",
    "x <|eot_id|> y <|frame_sep|><|not_special|>",
]


@pytest.fixture(scope="module")
def rank_path(tmp_path_factory):
  return toy.build_toy_tiktoken(tmp_path_factory.mktemp("tiktoken"))


@pytest.fixture(scope="module")
def tok(rank_path):
  return CwmTiktokenTokenizer(rank_path)


def reference_encode(ranks, text):
  """Llama-3 pre-tokenisation (the `regex` module) + textbook byte-pair merging.

  As in tiktoken, a pre-token that is itself a token is kept whole; otherwise the
  adjacent pair whose concatenation has the lowest rank is merged until none is left.
  """
  ids = []
  for piece in regex.findall(FORMATS_PATTERN, text):
    piece = piece.encode("utf-8")
    if piece in ranks:
      ids.append(ranks[piece])
      continue
    parts = [bytes([b]) for b in piece]
    while len(parts) > 1:
      pair_ranks = [ranks.get(a + b) for a, b in zip(parts, parts[1:])]
      candidates = [(r, i) for i, r in enumerate(pair_ranks) if r is not None]
      if not candidates:
        break
      _, i = min(candidates)
      parts[i:i + 2] = [parts[i] + parts[i + 1]]
    ids += [ranks[p] for p in parts]
  return ids


def test_pattern_is_the_formats_pattern():
  assert PRETOKENIZE_PATTERN == FORMATS_PATTERN


def test_pretokenisation_by_hand():
  # Worked through the alternatives of the pattern by hand.
  assert regex.findall(FORMATS_PATTERN, "I'm 12345 cats!!\n\n  x") == [
      "I", "'m", " ", "123", "45", " cats", "!!\n\n", " ", " x"]
  assert regex.findall(FORMATS_PATTERN, "    return x\n") == ["   ", " return", " x", "\n"]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_reference(tok, rank_path, text):
  ranks = load_rank_file(rank_path)
  assert tok.encode(text) == reference_encode(ranks, text)
  assert tok.decode(tok.encode(text)) == text


def test_encode_matches_reference_on_corpus(tok, rank_path):
  corpus = toy.toy_corpus()[:20000]
  assert tok.encode(corpus) == reference_encode(load_rank_file(rank_path), corpus)


def test_specials_follow_the_ranks(tok):
  n = tok.num_ranks
  assert tok.vocab_size == n + 256
  for k, token in enumerate(st.SPECIAL_TOKENS):
    assert tok.special_ids[token] == n + k
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (n, n + 1, n + 4)
  assert tok.stop_ids == (n + 1, n + 8, n + 9)
  assert tok.token_id("eot_id") == tok.token_id("<|eot_id|>") == n + 9
  assert tok.token_id("reserved_special_token_3") == n + 3
  with pytest.raises(ValueError, match="Unknown special token"):
    tok.token_id("<|nope|>")


def test_released_layout(tmp_path):
  """A rank file with 128,000 ranks puts the specials at 128000..128255 (FORMATS.md)."""
  lines = [base64.b64encode(bytes([b])) + b" %d" % b for b in range(256)]
  lines += [base64.b64encode(b"#%d#" % i) + b" %d" % (256 + i) for i in range(128_000 - 256)]
  path = tmp_path / "tokenizer.model"
  path.write_bytes(b"\n".join(lines) + b"\n")
  tok = CwmTiktokenTokenizer(path)
  assert tok.vocab_size == 128_256
  assert tok.bos_id == 128000 and tok.pad_id == 128004
  assert tok.stop_ids == (128001, 128008, 128009)
  assert dict(tok.special_ids) == st.CWM_SPECIAL_IDS
  assert tok.decode([128100, 128107]) == "<|frame_sep|><|trace_context_start|>"


def test_special_strings_are_text_unless_allowed(tok):
  text = "a<|eot_id|>b<|frame_sep|><|nope|>"
  plain = tok.encode(text)
  assert not any(tok.is_special(i) for i in plain)
  assert tok.decode(plain) == text
  allowed = tok.encode(text, allow_special=True)
  assert allowed == (tok.encode("a") + [tok.token_id("eot_id")] + tok.encode("b")
                     + [tok.token_id("frame_sep")] + tok.encode("<|nope|>"))
  assert tok.decode(allowed) == text


def test_bos_eos(tok):
  assert tok.encode("hi", bos=True, eos=True) == [tok.bos_id, *tok.encode("hi"), tok.eos_id]
  assert tok.decode([tok.bos_id]) == "<|begin_of_text|>"


def test_random_unicode_round_trip(tok):
  rng = random.Random(0)
  pool = [c for c in map(chr, range(0x2FFFF)) if not 0xD800 <= ord(c) <= 0xDFFF]
  for _ in range(50):
    text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 60)))
    text += "".join(rng.choice(" \n\t\r") for _ in range(rng.randint(0, 5)))
    assert tok.decode(tok.encode(text)) == text


def test_decode_out_of_range(tok):
  with pytest.raises(ValueError, match=f"Token id {tok.vocab_size} is out of range: valid ids "
                                       f"are 0..{tok.vocab_size - 1}"):
    tok.decode([1, tok.vocab_size])
  with pytest.raises(ValueError, match="Token id -1 is out of range"):
    tok.decode([-1])


def test_chunked_encoding_equals_whole(rank_path, tok):
  """Cutting after a newline followed by non-space never changes the ids."""
  small = CwmTiktokenTokenizer(rank_path, max_encode_chars=300, max_run_chars=200)
  corpus = toy.toy_corpus()[:30000]
  assert small.encode(corpus) == tok.encode(corpus)


def test_safe_cuts_never_change_ids(rank_path, tok):
  """Random whitespace-heavy texts, cut every ~20 chars: safe cuts keep the ids."""
  small = CwmTiktokenTokenizer(rank_path, max_encode_chars=20, max_run_chars=10**9)
  rng = random.Random(1)
  alphabet = ["\n", "\n", " ", " ", "\t", "\r", "\u2028", "a", "Zé", "7", "!", "'s", "(", "\x1c"]
  checked = 0
  for _ in range(300):
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(30, 120)))
    pieces = split_for_encoding(text, 20, 10**9)
    cuts = [sum(map(len, pieces[:i])) for i in range(1, len(pieces))]
    if all(text[c - 1] == "\n" and regex.match(r"[^\S\r\n]*\S", text[c:]) for c in cuts):
      checked += 1
      assert small.encode(text) == tok.encode(text), repr(text)
  assert checked > 50


@pytest.mark.parametrize("text", [
    "a" * 1000 + " " * 1000 + "\n" * 700 + "b",
    "x\n" * 400,
    " " * 2500,
])
def test_long_runs_round_trip(rank_path, text):
  small = CwmTiktokenTokenizer(rank_path, max_encode_chars=300, max_run_chars=200)
  assert small.decode(small.encode(text)) == text
  pieces = split_for_encoding(text, 300, 200)
  assert "".join(pieces) == text
  assert all(len(p) <= 300 for p in pieces)
  for p in pieces:
    assert all(len(run) <= 200 for run in regex.findall(r"\s+|\S+", p))


def test_pickle(tok):
  assert pickle.loads(pickle.dumps(tok)).encode("hello <|eot_id|>", allow_special=True) == \
      tok.encode("hello <|eot_id|>", allow_special=True)


def test_bpe_trainer_is_deterministic_and_consistent():
  corpus = toy.toy_corpus()[:10000]
  ranks = train_bpe_ranks([corpus], 150)
  assert ranks == train_bpe_ranks([corpus], 150)
  assert [ranks[bytes([b])] for b in range(256)] == list(range(256))
  assert sorted(ranks.values()) == list(range(len(ranks)))
  by_rank = sorted(ranks, key=ranks.get)
  for rank, token in enumerate(by_rank[256:], start=256):
    # Every merged token splits into two tokens of lower rank.
    assert any(token[:i] in ranks and token[i:] in ranks and ranks[token[:i]] < rank
               and ranks[token[i:]] < rank for i in range(1, len(token)))


# ---------------------------------------------------------------- bad files


def _write_ranks(path, extra_lines=b""):
  write_rank_file({bytes([b]): b for b in range(256)}, path)
  with open(path, "ab") as f:
    f.write(extra_lines)
  return path


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.model' does not exist"):
    CwmTiktokenTokenizer(tmp_path / "nope.model")


@pytest.mark.parametrize("extra, match", [
    (b"QUJD\n", r"line 257: expected 'BASE64_TOKEN RANK'"),
    (b"QUJD 256 7\n", r"line 257: expected 'BASE64_TOKEN RANK'"),
    (b"QUJD x\n", r"line 257: expected 'BASE64_TOKEN RANK'"),
    (b"!!!! 256\n", r"line 257: b?'!!!!' is not valid base64"),
    (b"QQ== 256\n", r"line 257: token b'A' already has rank 65"),
    (b"QUJD 300\n", r"rank 256 is missing"),
])
def test_malformed_rank_file(tmp_path, extra, match):
  path = _write_ranks(tmp_path / "bad.model", extra)
  with pytest.raises(ValueError, match=match) as info:
    CwmTiktokenTokenizer(path)
  assert "bad.model" in str(info.value)


def test_rank_file_without_all_bytes(tmp_path):
  path = tmp_path / "few.model"
  write_rank_file({bytes([b]): b for b in range(200)}, path)
  with pytest.raises(ValueError, match="every single byte must be a token; 56 are missing"):
    CwmTiktokenTokenizer(path)
