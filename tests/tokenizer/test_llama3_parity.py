"""The CWM tokenizer on the real Llama-3 rank file, against Meta's reference Tokenizer.

`load_tokenizer("llama3")` reads the rank file of the pinned test dependency
`llama-models`; `llama_models.llama3.tokenizer.Tokenizer` is Meta's reference on the
same file. Ordinary text must get Meta's ids exactly. Special tokens follow
FORMATS.md: same layout as Meta's (128000 + offset), but CWM names some of Meta's
reserved tokens (frame_sep, ...), so only the names both define are compared.
"""

import random
from pathlib import Path

import pytest
from llama_models.llama3 import tokenizer as meta_tokenizer

from cwm_jax.tokenizer import CwmTiktokenTokenizer, load_tokenizer
from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer.cwm_tiktoken import (MAX_ENCODE_CHARS, MAX_RUN_CHARS, PRETOKENIZE_PATTERN,
                                            split_for_encoding)
from tests.tokenizer.test_special_tokens import FORMATS_TABLE

REPO = Path(__file__).resolve().parents[2]
# Where Meta's `Tokenizer.get_instance()` reads its rank file.
META_RANK_FILE = Path(meta_tokenizer.__file__).parent / "tokenizer.model"
# Special tokens that Meta's Tokenizer and CWM both define under the same name.
SHARED_SPECIALS = [st.BOS, st.EOS, st.START_HEADER, st.END_HEADER, st.EOM, st.EOT]

TEXTS = [
    "",
    "def f(x):\r\n\tif x:\r\n\t\treturn x\t# tab\r\n\r\n",
    "Café naïve façade Ångström Øre ß ẞ İstanbul",
    "日本語のテキスト、中文字符，한국어 텍스트",
    "🙂🚀 👨‍👩‍👧‍👦 🇫🇷 👍🏽 ❤️",
    "e\u0301 a\u0308\u0304 Z\u0336a\u0336l\u0336g\u0336o\u0336 \u0301leading",
    "1234567890" * 10 + " 3.14159265358979 1e-10 0x1F ٣٤٥٦ ١٢٣",
    "7" * (MAX_RUN_CHARS + 1),  # Meta cuts runs > MAX_RUN_CHARS, here mid-token
    "x" + "7" * (2 * MAX_RUN_CHARS + 5) + " y",
    " " * 1000 + "x" + "\n" * 3000 + "y",
    "a" + " " * (MAX_RUN_CHARS + 1) + "b",
    "\t \t\n" * (MAX_RUN_CHARS // 2),
    "\u3000\u00a0 \u2028x\u2029\x0b\x0c\x1c y \r\r\n",
    "I'M here, you'RE there, it's THEY'LL'd 've 'REally THEY'LLx I'Dk it'Sup",
    "\x00\x01\x7f\x1b[0m \ufeff\ufffd",
    "x <|eot_id|> <|begin_of_text|><|frame_sep|>y<|reasoning_thinking_start|>"
    "<|reserved_special_token_5|><|python_tag|><|not_special|>",
]


@pytest.fixture(scope="module")
def meta():
  return meta_tokenizer.Tokenizer(META_RANK_FILE)


@pytest.fixture(scope="module")
def ours():
  return load_tokenizer("llama3")


@pytest.fixture(scope="module")
def repo_texts():
  """A seeded sample of this repository's .py and .md files, read now."""
  files = sorted(p for ext in ("py", "md") for p in REPO.glob(f"**/*.{ext}")
                 if not any(part.startswith(".") for part in p.relative_to(REPO).parts))
  assert len(files) > 50, f"expected the repository's sources under {REPO}"
  sample = random.Random(0).sample(files, 60)
  return {str(p.relative_to(REPO)): p.read_text(encoding="utf-8", errors="replace")
          for p in sample}


def meta_encode(meta, text):
  return meta.encode(text, bos=False, eos=False)


def test_loads_metas_file(ours, meta):
  assert isinstance(ours, CwmTiktokenTokenizer)
  assert Path(ours.path).resolve() == META_RANK_FILE.resolve()
  assert ours.num_ranks == st.CWM_NUM_RANKS
  assert ours.vocab_size == meta.n_words == 128_256
  # Every mergeable token has Meta's bytes.
  assert all(ours.encoding.decode_single_token_bytes(i) == meta.model.decode_single_token_bytes(i)
             for i in range(ours.num_ranks))


def test_pattern_is_metas():
  assert PRETOKENIZE_PATTERN == meta_tokenizer.Tokenizer.pat_str


@pytest.mark.parametrize("text", TEXTS, ids=lambda t: repr(t[:24]))
def test_texts_match_meta(ours, meta, text):
  ids = ours.encode(text)
  assert ids == meta_encode(meta, text)
  assert not any(ours.is_special(i) for i in ids)
  assert ours.decode(ids) == text


def test_repository_sources_match_meta(ours, meta, repo_texts):
  bad = [name for name, text in repo_texts.items()
         if ours.encode(text) != meta_encode(meta, text)]
  assert not bad, f"ids differ from Meta's on {bad}"
  assert all(ours.decode(ours.encode(text)) == text for text in repo_texts.values())


def test_crlf_and_tabs_match_meta(ours, meta, repo_texts):
  for name, text in repo_texts.items():
    text = text.replace("\n", "\r\n").replace("    ", "\t")
    ids = ours.encode(text)
    assert ids == meta_encode(meta, text), name
    assert ours.decode(ids) == text, name


def test_text_longer_than_one_piece(ours, meta, repo_texts):
  """Past MAX_ENCODE_CHARS ours equals tiktoken on the whole text.

  Meta's `encode` cuts every MAX_ENCODE_CHARS chars wherever that falls, here inside
  a word; ours cuts only where no pre-token spans the cut, so the reference is
  Meta's tiktoken Encoding applied to the whole text at once.
  """
  corpus = "".join(repo_texts.values())
  filler = (corpus * (MAX_ENCODE_CHARS // len(corpus) + 1))[:MAX_ENCODE_CHARS - 5]
  text = filler + " internationalization_word\n" + corpus[:50_000]
  assert len(split_for_encoding(text)) > 1
  ids = ours.encode(text)
  assert ids == meta.model.encode_ordinary(text)
  assert meta_encode(meta, text) != ids  # the naive cut does change the ids here
  assert ours.decode(ids) == text


def test_random_texts_match_meta(ours, meta):
  rng = random.Random(0)
  alphabet = [" ", " ", "\n", "\r\n", "\t", "\u00a0", "a", "Zé", "ǅ", "'s", "'LL", "7", "٣",
              "!", "((", "<|eot_id|>", "日本", "🙂", "\u0301", "\x00", "_", "-->"]
  for _ in range(300):
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
    ids = ours.encode(text)
    assert ids == meta_encode(meta, text), repr(text)
    assert ours.decode(ids) == text


def test_decode_matches_meta(ours, meta):
  rng = random.Random(1)
  for _ in range(50):
    ids = [rng.randrange(ours.num_ranks) for _ in range(rng.randint(1, 40))]
    assert ours.decode(ids) == meta.decode(ids)


def test_special_ids_are_formats(ours):
  for token, token_id in FORMATS_TABLE.items():
    assert ours.token_id(token) == token_id
    assert ours.decode([token_id]) == token
    assert ours.encode(token, allow_special=True) == [token_id]
  for token_id in set(range(128_000, 128_256)) - set(FORMATS_TABLE.values()):
    assert ours.decode([token_id]) == f"<|reserved_special_token_{token_id - 128_000}|>"
  assert ours.stop_ids == (128001, 128008, 128009)


def test_special_ids_agree_with_meta(ours, meta):
  assert sorted(meta.special_tokens.values()) == sorted(ours.special_ids.values())
  for token in SHARED_SPECIALS:
    assert ours.special_ids[token] == meta.special_tokens[token], token
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (meta.bos_id, meta.eos_id, meta.pad_id)
  assert list(ours.stop_ids) == meta.stop_tokens


def test_allowed_specials(ours, meta):
  shared = "".join(f"{t} x{i}" for i, t in enumerate(SHARED_SPECIALS)) + " end"
  assert ours.encode(shared, allow_special=True) == meta.encode(
      shared, bos=False, eos=False, allowed_special="all")
  # CWM-only names: Meta knows them as text only.
  text = "a<|frame_sep|> b\n<|trace_context_start|>def f():"
  expected = (meta_encode(meta, "a") + [128100] + meta_encode(meta, " b\n") + [128107]
              + meta_encode(meta, "def f():"))
  assert ours.encode(text, allow_special=True) == expected
  assert ours.decode(expected) == text


def test_bos_eos_match_meta(ours, meta):
  text = "hello world"
  assert ours.encode(text, bos=True, eos=True) == meta.encode(text, bos=True, eos=True)
