"""`load_tokenizer` picks the implementation from the file's content."""

import shutil

import pytest

from cwm_jax.tokenizer import CwmTiktokenTokenizer, SentencePieceTokenizer, load_tokenizer, toy


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("load")
  return {"tiktoken": toy.build_toy_tiktoken(d, num_merges=50),
          "sentencepiece": toy.build_toy_sentencepiece(d, vocab_size=700)}


@pytest.mark.parametrize("kind, cls", [("tiktoken", CwmTiktokenTokenizer),
                                       ("sentencepiece", SentencePieceTokenizer)])
def test_detects_kind(files, tmp_path, kind, cls):
  tok = load_tokenizer(files[kind])
  assert isinstance(tok, cls)
  assert tok.decode(tok.encode("def f():\n    return 1\n")) == "def f():\n    return 1\n"
  # A checkpoint directory holding tokenizer.model.
  shutil.copy(files[kind], tmp_path / "tokenizer.model")
  assert isinstance(load_tokenizer(tmp_path), cls)


def test_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="Tokenizer file .*nope.model' does not exist"):
    load_tokenizer(tmp_path / "nope.model")
  with pytest.raises(FileNotFoundError, match="tokenizer.model' does not exist"):
    load_tokenizer(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"\x0a\x03abc", b"\x00\x01\x02"])
def test_unrecognised(tmp_path, content):
  path = tmp_path / "weird.bin"
  path.write_bytes(content)
  with pytest.raises(ValueError, match="weird.bin' is neither a tiktoken rank file"):
    load_tokenizer(path)


def test_malformed_rank_file_reports_line(files, tmp_path):
  path = tmp_path / "broken.model"
  data = open(files["tiktoken"], "rb").read().splitlines()
  data[9] = b"QUJD"
  path.write_bytes(b"\n".join(data))
  with pytest.raises(ValueError, match=r"broken.model, line 10: expected 'BASE64_TOKEN RANK'"):
    load_tokenizer(path)
