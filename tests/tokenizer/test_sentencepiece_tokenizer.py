"""Project-trained sentencepiece tokenizers: exact round trips of code, specials by name."""

import inspect
import os
import pathlib
import pickle
import random
import subprocess
import sys
import textwrap

import pytest
import sentencepiece as spm

from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer import toy
from cwm_jax.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

CODE_SAMPLES = [
    "def f(x):\n    return x\n",
    "\n\n\nclass A:\n\n    def g(self):\n\t\tpass\n\n        # odd indent   \n",
    "    leading spaces, no trailing newline",
    "trailing spaces   \n   \n",
    "s = 'café ☕ 日本語 🙂'  # unicode\r\nwindows line\r\n",
    "x = '\u2581 is sentencepiece\\'s space marker \u2581\u2581'\n",
    "nul\x00 bell\x07 form\x0c feed\x0b\n",
    "",
    " ",
    "\n",
    inspect.getsource(textwrap),
]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tok(request, tmp_path_factory):
  d = tmp_path_factory.mktemp(f"sp_{request.param}")
  return SentencePieceTokenizer(toy.build_toy_sentencepiece(d, model_type=request.param))


@pytest.mark.parametrize("text", CODE_SAMPLES)
def test_code_round_trips_exactly(tok, text):
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert not any(tok.is_special(i) for i in ids)


def test_random_unicode_round_trip(tok):
  rng = random.Random(0)
  pool = [c for c in map(chr, range(0x2FFFF)) if not 0xD800 <= ord(c) <= 0xDFFF]
  pool += list(" \n\t\r\u2581") * 200
  for _ in range(50):
    text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 80)))
    assert tok.decode(tok.encode(text)) == text


def test_newline_and_indentation_pieces(tok):
  assert tok.encode("\n") == [tok.processor.piece_to_id("\n")]
  assert tok.encode("\t") == [tok.processor.piece_to_id("\t")]
  # Indentation runs are learned as whitespace-only pieces.
  assert len(tok.encode(" " * 8)) < 8


def test_specials_by_name(tok):
  for k, token in enumerate(st.SPECIAL_TOKENS):
    assert tok.special_ids[token] == 1 + k
    assert tok.processor.id_to_piece(1 + k) == token
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 5)
  assert tok.stop_ids == (tok.token_id("end_of_text"), tok.token_id("eom_id"),
                          tok.token_id("<|eot_id|>")) == (2, 9, 10)
  assert tok.vocab_size == 1024


def test_special_strings_are_text_unless_allowed(tok):
  text = "a<|eot_id|>b <<|frame_sep|>\n<|nope|><|pad|>"
  plain = tok.encode(text)
  assert not any(tok.is_special(i) for i in plain)
  assert tok.decode(plain) == text
  allowed = tok.encode(text, allow_special=True)
  specials = [i for i in allowed if tok.is_special(i)]
  assert specials == [tok.token_id("eot_id"), tok.token_id("frame_sep"), tok.token_id("pad")]
  assert tok.decode(allowed) == text
  assert tok.encode("<|eot_id|>", allow_special=True, bos=True, eos=True) == [
      tok.bos_id, tok.token_id("eot_id"), tok.eos_id]


def test_decode_out_of_range(tok):
  with pytest.raises(ValueError, match=r"Token id 1024 is out of range: valid ids are 0\.\.1023"):
    tok.decode([3, 1024])


def test_pickle(tok):
  again = pickle.loads(pickle.dumps(tok))
  assert again.encode(CODE_SAMPLES[1]) == tok.encode(CODE_SAMPLES[1])


def test_training_from_files_is_deterministic(tmp_path):
  src = tmp_path / "corpus.py"
  src.write_text(toy.toy_corpus(), encoding="utf-8")
  a = SentencePieceTokenizer(train_sentencepiece([src], tmp_path / "a", 800)).processor
  b = SentencePieceTokenizer(train_sentencepiece([src], tmp_path / "sub" / "b", 800)).processor
  pieces = lambda sp: [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
  assert pieces(a) == pieces(b)


def test_cli(tmp_path):
  src = tmp_path / "corpus.py"
  src.write_text(toy.toy_corpus(), encoding="utf-8")
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  result = subprocess.run(
      [sys.executable, "-m", "cwm_jax.tokenizer.train_sp", f"--input={src},{src}",
       f"--model_prefix={tmp_path / 'cli'}", "--vocab_size=700"],
      capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
  assert result.returncode == 0, result.stderr
  tok = SentencePieceTokenizer(tmp_path / "cli.model")
  assert tok.vocab_size == 700
  assert tok.decode(tok.encode(CODE_SAMPLES[1])) == CODE_SAMPLES[1]


# ---------------------------------------------------------------- bad input


def test_vocab_too_small(tmp_path):
  with pytest.raises(ValueError, match="vocab_size=400 is too small"):
    train_sentencepiece(["x = 1\n"], tmp_path / "m", 400)


def test_vocab_too_large_for_corpus(tmp_path):
  with pytest.raises(ValueError, match="Vocabulary size too high"):
    train_sentencepiece(["x = 1\n"], tmp_path / "m", 5000)


def test_path_given_as_str(tmp_path):
  src = tmp_path / "corpus.py"
  src.write_text("x = 1\n")
  with pytest.raises(ValueError, match="pass pathlib.Path"):
    train_sentencepiece([str(src)], tmp_path / "m", 1000)


def test_missing_training_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.txt' does not exist"):
    train_sentencepiece([tmp_path / "nope.txt"], tmp_path / "m", 1000)


def test_missing_model(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.model' does not exist"):
    SentencePieceTokenizer(tmp_path / "nope.model")


def test_model_without_specials(tmp_path):
  spm.SentencePieceTrainer.train(sentence_iterator=iter([toy.toy_corpus()[:20000]]),
                                 model_prefix=str(tmp_path / "plain"), vocab_size=300,
                                 minloglevel=2, max_sentence_length=100000)
  with pytest.raises(ValueError, match="lacks 256 of the 256 CWM special tokens"):
    SentencePieceTokenizer(tmp_path / "plain.model")


def test_not_a_model(tmp_path):
  path = tmp_path / "junk.model"
  path.write_bytes(b"\x0a\x05hello world")
  with pytest.raises(ValueError, match="junk.model' is not a sentencepiece model"):
    SentencePieceTokenizer(path)


def test_extra_symbols_and_single_text_source(tmp_path):
  tok = SentencePieceTokenizer(
      train_sentencepiece(toy.toy_corpus(), tmp_path / "m", 900, extra_symbols=["<think>"]))
  assert tok.encode("<think>") == [tok.processor.piece_to_id("<think>")]
  with pytest.raises(ValueError, match="extra symbol '    ': must be non-empty and contain no spaces"):
    train_sentencepiece(["x\n"], tmp_path / "m2", 900, extra_symbols=["    "])
