"""Shared fixtures of the environment tests: a toy tokenizer, scripted agent turns, one
SandboxPool per test module, and an executor whose sandbox always fails."""

import shutil

import pytest

from cwm_jax.sandbox import ExecResult, Executor, SandboxConfig, SandboxPool
from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer.toy import toy_tiktoken_tokenizer

NO_BWRAP = "bubblewrap is not installed (apt-get install -y bubblewrap); cwm_jax.sandbox " \
           "refuses to run untrusted code without it"


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
  return toy_tiktoken_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def turn(tokenizer):
  """turn(text, stop=True): an agent turn's ids, as the engine hands them to `step`:
  the text's tokens, then <|eot_id|> unless a stop string (e.g. </tool>) ended it."""
  eot = tokenizer.special_ids[st.EOT]

  def make(text: str, stop: bool = True) -> list[int]:
    return tokenizer.encode(text) + ([eot] if stop else [])

  return make


@pytest.fixture(scope="module")
def pool():
  if shutil.which("bwrap") is None:
    pytest.skip(NO_BWRAP)
  with SandboxPool(2, SandboxConfig(timeout_s=5, memory_mb=1024)) as sandbox:
    yield sandbox


class BrokenSandbox(Executor):
  """Every job fails in the harness (not the program's fault)."""
  config = SandboxConfig()

  def run(self, job):
    return ExecResult.failure("the runner died", executor="bwrap")


@pytest.fixture
def broken_sandbox():
  return BrokenSandbox()
