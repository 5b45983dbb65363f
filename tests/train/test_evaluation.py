"""Held-out evaluation: independent of the process count, and one pass over the set.

Two CPU processes with 4 fake devices each (gloo collectives, as in
tests/sharding/test_distributed.py) evaluate fixed batches and a held-out file,
each feeding only its own rows; the metrics must equal those of this (single)
process. A held-out set smaller than eval_batches x batch_size rows is read
once: its token count and loss equal a direct per-record computation.
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from cwm_jax.model import transformer
from cwm_jax.tokenizer import load_tokenizer
from cwm_jax.tokenizer.toy import build_toy_sentencepiece
from cwm_jax.train.evaluation import HeldOutLoss, held_out_batches
from data_pipelines.pipeline import PipelineConfig, SourceConfig, build_held_out_iterator
from tests.multiprocess import free_port, start_workers, wait_workers
from tests.train import eval_multihost_worker as worker

WORKER = Path(worker.__file__)
WORDS = ("value", "of", "x", "is")


def _texts(n: int, prefix: str = "record") -> list[str]:
  """Documents of 18-26 toy-tokenizer tokens: more than half a row, so one per row."""
  return [f"{prefix} {i}: " + " ".join(WORDS[j % 4] for j in range(10 + i % 9)) for i in range(n)]


def _write_jsonl(path: Path, texts) -> str:
  path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  return str(path)


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
  return build_toy_sentencepiece(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model(tok_path):
  """(mesh, cfg, params, sums): the worker's setup on this process's 8 devices."""
  return worker.setup(load_tokenizer(tok_path).vocab_size)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, tok_path, model):
  data = _write_jsonl(tmp_path / "held_out.jsonl", _texts(17))
  coord = f"localhost:{free_port()}"
  outs = [tmp_path / f"p{i}.json" for i in range(2)]
  workers = start_workers([[sys.executable, str(WORKER), f"--out={outs[i]}",
                           f"--tokenizer={tok_path}", f"--data={data}", f"--coordinator={coord}",
                           "--num_processes=2", f"--process_id={i}"] for i in range(2)], tmp_path)
  try:
    single = worker.evaluate(tok_path, data, model)  # the reference, while the workers run
  finally:
    wait_workers(workers)
  p0, p1 = (json.loads(p.read_text()) for p in outs)

  assert [p0["process_count"], p1["process_count"]] == [2, 2]
  assert sorted([p0["rows"], p1["rows"]]) == [[0, 8], [8, 16]] and single["rows"] == [0, 16]
  # Every process read its own records (9 and 8 of 17, one per row), so they ran out of
  # data at different batches: the one with fewer fed an empty batch.
  assert sorted([p0["local_rows"], p1["local_rows"]]) == [8, 9] and single["local_rows"] == 17
  assert sorted([p0["local_batches"], p1["local_batches"]]) == [1, 2]
  for what in ("fixed", "held_out"):
    assert p0[what] == p1[what], what
    multi, ref = p0[what], single[what]
    assert ref["eval_tokens"] > 0 and ref["eval_complete"], what
    assert {k: v for k, v in multi.items() if k != "eval_loss"} == \
           {k: v for k, v in ref.items() if k != "eval_loss"}, what
    np.testing.assert_allclose(multi["eval_loss"], ref["eval_loss"], rtol=1e-6, err_msg=what)
  assert single["fixed"]["eval_batches"] == worker.FIXED_BATCHES
  assert single["held_out"]["eval_batches"] == 2


def _direct_loss(params, cfg, token_lists) -> tuple[float, int]:
  """(mean next-token cross-entropy, target count) of each document on its own row
  (right-padded: causal attention keeps padding out of its logits), in numpy."""
  tokens_BT = np.zeros((len(token_lists), max(map(len, token_lists))), np.int32)
  for b, ids in enumerate(token_lists):
    tokens_BT[b, :len(ids)] = ids
  logits_BTV = np.asarray(transformer.jit_forward(jax.device_get(params), tokens_BT, cfg),
                          np.float64)
  top_BT = logits_BTV.max(-1)
  lse_BT = np.log(np.exp(logits_BTV - top_BT[..., None]).sum(-1)) + top_BT
  ce, count = 0.0, 0
  for b, ids in enumerate(token_lists):
    t = np.arange(len(ids) - 1)
    ce += float(np.sum(lse_BT[b, t] - logits_BTV[b, t, ids[1:]]))
    count += len(t)
  return ce / count, count


@pytest.mark.parametrize("eval_batches", [2, 5])
def test_small_held_out_set_is_read_once(tmp_path, tok_path, model, eval_batches):
  # 17 documents, one per row: fewer rows than eval_batches x 16; the repeating
  # training pipeline would wrap around and count documents twice.
  texts = _texts(17)
  data = _write_jsonl(tmp_path / "held_out.jsonl", texts)
  mesh, cfg, params, sums = model
  pipeline = PipelineConfig(sources=(SourceConfig("held_out", data, "text"),),
                            tokenizer_path=tok_path, seq_len=worker.SEQ,
                            batch_size=worker.GLOBAL_BATCH, shuffle=False)
  got = HeldOutLoss(held_out_batches(pipeline), eval_batches, sums)(params, 0)

  tok = load_tokenizer(tok_path)
  token_lists = [tok.encode(t, bos=True, eos=True) for t in texts]  # BOS + text + EOS
  want_loss, want_tokens = _direct_loss(params, cfg, token_lists)
  assert want_tokens == sum(len(ids) - 1 for ids in token_lists)
  assert got["eval_tokens"] == want_tokens
  assert got["eval_batches"] == 2 and got["eval_complete"] is True
  np.testing.assert_allclose(got["eval_loss"], want_loss, rtol=1e-5)


def test_capped_evaluation_says_it_is_incomplete(tmp_path, tok_path, model):
  _, _, params, sums = model
  data = _write_jsonl(tmp_path / "held_out.jsonl", _texts(17))
  pipeline = PipelineConfig(sources=(SourceConfig("held_out", data, "text"),),
                            tokenizer_path=tok_path, seq_len=worker.SEQ,
                            batch_size=worker.GLOBAL_BATCH, shuffle=False)
  first = HeldOutLoss(held_out_batches(pipeline), 1, sums)(params, 0)
  whole = HeldOutLoss(held_out_batches(pipeline), None, sums)(params, 0)
  assert first["eval_batches"] == 1 and first["eval_complete"] is False
  assert whole["eval_batches"] == 2 and whole["eval_complete"] is True
  assert 0 < first["eval_tokens"] < whole["eval_tokens"]


@pytest.mark.parametrize("shard_count", [1, 2])
def test_held_out_iterator_yields_every_record_once(tmp_path, tok_path, shard_count):
  # Two sources of different sizes, packed several documents a row: all of both are read
  # (not mixed, which would stop at the first exhausted source), over all shards.
  texts = {"a": [f"alpha {i}" for i in range(7)], "b": [f"beta {i} is x" for i in range(12)]}
  sources = tuple(SourceConfig(name, _write_jsonl(tmp_path / f"{name}.jsonl", ts), "text")
                  for name, ts in texts.items())
  tok = load_tokenizer(tok_path)
  want = sorted(tuple(tok.encode(t, bos=True, eos=True)) for ts in texts.values() for t in ts)
  docs, real_rows = [], 0
  for shard in range(shard_count):
    config = PipelineConfig(sources=sources, tokenizer_path=tok_path, seq_len=32, batch_size=4,
                            num_epochs=None, shard_index=shard, shard_count=shard_count)
    with build_held_out_iterator(config) as it:
      batches = list(it)
      assert len(batches) == -(-it.rows // 4)
      assert it.stats.counts["documents"] == sum(len(ts[shard::shard_count])
                                                 for ts in texts.values())
      real_rows += it.rows
    for b in batches:
      assert all(v.shape == (4, 32) and v.dtype == np.int32 for v in b.values())
      for row in range(4):
        seg = b["segment_ids"][row]
        if not seg.any():  # a padding row: no targets
          assert not b["loss_mask"][row].any() and not b["tokens"][row].any()
        for s in range(1, seg.max() + 1):
          docs.append(tuple(b["tokens"][row][seg == s]))
  assert sorted(docs) == want
  assert real_rows < len(want)  # several documents per row


@pytest.mark.parametrize("num_batches", [0, -1, 1.5, True])
def test_bad_num_batches_is_named(num_batches):
  with pytest.raises(ValueError, match="num_batches"):
    HeldOutLoss(lambda: None, num_batches, lambda params, batch: None)
