"""`load_tokenizer` picks the implementation from the file's content, or finds "llama3"."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cwm_jax.tokenizer import CwmTiktokenTokenizer, SentencePieceTokenizer, load_tokenizer, toy
from cwm_jax.tokenizer import llama3_file

REPO = Path(__file__).resolve().parents[2]


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


# ------------------------------------------------ "llama3": the llama-models file


def test_llama3_is_the_llama_models_file_and_not_imported(tmp_path):
  """A fresh interpreter loads "llama3" from the package's files without importing it."""
  code = ("import sys; from cwm_jax.tokenizer import load_tokenizer; tok = load_tokenizer('llama3'); "
          "assert 'llama_models' not in sys.modules, 'llama_models was imported'; print(tok.path)")
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                       capture_output=True, text=True).stdout
  from llama_models.llama3 import tokenizer as meta_tokenizer  # where Meta reads it
  assert Path(out.strip()) == Path(meta_tokenizer.__file__).parent / "tokenizer.model"


def test_llama3_pin_matches_requirements():
  pins = (REPO / "requirements-test.txt").read_text().split()
  assert llama3_file.LLAMA_MODELS_REQUIREMENT in pins
  assert llama3_file.LLAMA_MODELS_REQUIREMENT in load_tokenizer.__doc__
  assert llama3_file.LLAMA_MODELS_REQUIREMENT in (REPO / "README.md").read_text()


def test_llama3_not_installed(monkeypatch):
  monkeypatch.setattr(llama3_file, "_PACKAGE", "no_such_package_for_cwm_tests")
  with pytest.raises(ModuleNotFoundError,
                     match=r"not installed: run `pip install llama-models==\d+\.\d+\.\d+`, "
                           r"or pass the path of a tiktoken `tokenizer.model`"):
    load_tokenizer("llama3")


def test_llama3_package_without_rank_file(monkeypatch, tmp_path):
  (tmp_path / "fake_llama_models_pkg").mkdir()
  (tmp_path / "fake_llama_models_pkg" / "__init__.py").write_text("")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setattr(llama3_file, "_PACKAGE", "fake_llama_models_pkg")
  with pytest.raises(FileNotFoundError, match=r"'fake_llama_models_pkg' has no rank file; "
                                              r"looked for .*llama3/tokenizer.model"):
    load_tokenizer("llama3")


def test_llama3_local_path_is_a_path(files, tmp_path, monkeypatch):
  """Only the exact string names the package file; "./llama3" or a Path is a local file."""
  shutil.copy(files["tiktoken"], tmp_path / "llama3")
  monkeypatch.chdir(tmp_path)
  for path in ("./llama3", Path("llama3")):
    assert load_tokenizer(path).path == os.fspath(path)
