"""The toy world-model corpus: files, a stable held-out split, and answers that match
the programs' real behaviour (checked by running each program in the sandbox)."""

import json
import shutil

import pytest

from cwm_jax.sandbox import run_python
from cwm_jax.tokenizer import load_tokenizer
from data_pipelines.toy_corpus import ToyCorpusConfig, build_toy_corpus, is_heldout
from data_pipelines.traces.parse import parse_trace

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
CONFIG = ToyCorpusConfig(programs=40, heldout_fraction=0.25, vocab_size=800, num_workers=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  out = tmp_path_factory.mktemp("toy")
  return out, build_toy_corpus(str(out), CONFIG, log=lambda *_: None)


def read(path):
  return [json.loads(line) for line in open(path)]


def test_files_and_counts(corpus):
  out, manifest = corpus
  counts = manifest["counts"]
  assert sum(counts["trace_status"].values()) == CONFIG.programs  # nothing silently lost
  for name in ("code", "traces", "chat"):
    train, held = read(out / f"{name}.jsonl"), read(out / f"{name}_heldout.jsonl")
    assert len(train) == counts[name] and len(held) == counts[f"{name}_heldout"]
    assert len(train) + len(held) == counts["trace_status"]["ok"]
    assert all(is_heldout(r["id"], CONFIG.heldout_fraction) for r in held)
    assert not any(is_heldout(r["id"], CONFIG.heldout_fraction) for r in train)
  tok = load_tokenizer(manifest["tokenizer"])
  assert tok.vocab_size == CONFIG.vocab_size
  # Re-running with the same config is a no-op that returns the same manifest.
  assert build_toy_corpus(str(out), CONFIG, log=lambda *_: None) == manifest


def test_traces_parse_and_chat_answers_are_the_real_return_values(corpus):
  out, _ = corpus
  codes = {r["id"]: r["text"] for r in read(out / "code.jsonl")}
  chats = {r["id"]: r for r in read(out / "chat.jsonl")}
  for record in read(out / "traces.jsonl")[:8]:
    trace = parse_trace(record["trace_text"])
    answer = chats[record["id"]]["messages"][1]["content"].split("</think>\n", 1)[1]
    assert answer == trace.return_value
    # The program's own `print(f(...))` line, run for real, prints the same value's str.
    src = codes[record["id"]].replace("print(f(", "print(repr(f(").rstrip() + ")\n"
    result = run_python(src, timeout_s=10)
    assert result.ok, result
    assert result.stdout.strip() == answer
