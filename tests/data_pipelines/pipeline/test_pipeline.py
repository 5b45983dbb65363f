"""build_train_iterator end to end on small generated files with the toy tokenizer."""

import json

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from cwm_jax.tokenizer import load_tokenizer
from cwm_jax.tokenizer.formats import ROLES, encode_dialog_with_mask
from cwm_jax.tokenizer.toy import build_toy_sentencepiece
from data_pipelines.pipeline import PipelineConfig, SourceConfig, build_train_iterator
from data_pipelines.pipeline.documents import encode_record
from data_pipelines.pipeline.mixture import source_records
from data_pipelines.pipeline.sources import open_source
from data_pipelines.traces.format import encode_trace_with_mask, format_trace
from data_pipelines.traces.frames import CallFrame, LineFrame, ReturnFrame, Trace

T, B = 64, 4


def _trace(i):
  ctx = f"def main():  # << START_OF_TRACE\n  x = {i}\n  return x\n"
  return Trace(ctx, (CallFrame({}, "def main():\n"), LineFrame({}, f"  x = {i}\n"),
                     LineFrame({"x": str(i)}, "  return x\n"), ReturnFrame("  return x\n", str(i))))


def _chat(i):
  return [{"role": "user", "content": f"what is {i}?"}, {"role": "assistant", "content": f"it is {i}"}]


def _write_jsonl(path, lines):
  with open(path, "wb") as f:
    for line in lines:
      f.write(line if isinstance(line, bytes) else json.dumps(line).encode())
      f.write(b"\n")
  return str(path)


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
  return build_toy_sentencepiece(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("data")
  traces = str(d / "traces.array_record")
  w = ArrayRecordWriter(traces, "group_size:1")
  for i in range(60):
    w.write(json.dumps({"trace_text": format_trace(_trace(i))}).encode())
  w.close()
  text = _write_jsonl(d / "text.jsonl", [{"text": f"doc {i}: " + "word " * (i % 9)} for i in range(120)])
  chat = _write_jsonl(d / "chat.jsonl", [{"messages": _chat(i)} for i in range(60)])
  return {"trace": traces, "text": text, "chat": chat}


def _config(files, tok_path, **kw):
  sources = kw.pop("sources", None)
  if sources is None:
    sources = (SourceConfig("trace", files["trace"], "trace", 0.3),
               SourceConfig("code", files["text"], "text", 0.4),
               SourceConfig("chat", files["chat"], "chat", 0.3))
  return PipelineConfig(**{"sources": sources, "tokenizer_path": tok_path, "seq_len": T,
                           "batch_size": B, "seed": 1, "shard_index": 0, "shard_count": 1, **kw})


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_batches_match_the_train_step(files, tok_path):
  with build_train_iterator(_config(files, tok_path)) as it:
    batch = next(it)
  assert sorted(batch) == ["loss_mask", "positions", "segment_ids", "tokens"]
  for v in batch.values():
    assert v.dtype == np.int32 and v.shape == (B, T)
  assert (batch["segment_ids"][:, 0] == 1).all()


@pytest.mark.parametrize("train_on_context", [False, True])
def test_record_kinds_are_masked_as_documented(tok_path, train_on_context):
  tok = load_tokenizer(tok_path)
  trace = _trace(3)
  doc = encode_record(json.dumps({"trace_text": format_trace(trace)}).encode(), "trace", tok,
                      train_on_context=train_on_context)
  ids, mask = encode_trace_with_mask(tok, trace, train_on_context=train_on_context)
  np.testing.assert_array_equal(doc["tokens"], ids)
  np.testing.assert_array_equal(doc["loss_mask"], mask)
  doc = encode_record(json.dumps({"messages": _chat(2)}).encode(), "chat", tok)
  ids, mask = encode_dialog_with_mask(tok, _chat(2))
  np.testing.assert_array_equal(doc["tokens"], ids)
  np.testing.assert_array_equal(doc["loss_mask"], mask)
  doc = encode_record(b'{"text": "hello"}', "text", tok)
  np.testing.assert_array_equal(doc["tokens"], tok.encode("hello", bos=True, eos=True))
  assert doc["loss_mask"][0] == 0 and doc["loss_mask"][1:].all()


def test_same_seed_same_batches_other_seed_differs(files, tok_path):
  with build_train_iterator(_config(files, tok_path)) as a, \
       build_train_iterator(_config(files, tok_path)) as b, \
       build_train_iterator(_config(files, tok_path, seed=2)) as c:
    xa, xb, xc = _take(a, 5), _take(b, 5), _take(c, 5)
  _assert_same(xa, xb)
  assert any((x["tokens"] != y["tokens"]).any() for x, y in zip(xa, xc))


def test_mixture_proportions(files, tok_path):
  tok = load_tokenizer(tok_path)
  first = {tok.special_ids["<|trace_context_start|>"]: "trace",
           tok.special_ids["<|start_header_id|>"]: "chat"}
  counts = {"trace": 0, "code": 0, "chat": 0}
  with build_train_iterator(_config(files, tok_path, seq_len=128)) as it:
    for batch in _take(it, 100):
      for row in batch["tokens"]:  # every document here fits a row: rows start with BOS
        counts[first.get(int(row[1]), "code")] += 1
  total = sum(counts.values())
  for name, weight in [("trace", 0.3), ("code", 0.4), ("chat", 0.3)]:
    assert abs(counts[name] / total - weight) < 0.03, counts


def test_shards_are_disjoint(files, tok_path):
  records = [set(source_records(SourceConfig("t", files["text"], "text"), i, 2)) for i in (0, 1)]
  assert not records[0] & records[1]
  assert len(records[0] | records[1]) == len(open_source(files["text"]))
  docs = []
  for i in (0, 1):
    cfg = _config(files, tok_path, sources=(SourceConfig("t", files["text"], "text"),),
                  shard_index=i, shard_count=2, num_epochs=1, batch_size=1)
    with build_train_iterator(cfg) as it:
      docs.append({tuple(r["tokens"][0][r["segment_ids"][0] == s])
                   for r in it for s in range(1, r["segment_ids"].max() + 1)})
  assert docs[0] and docs[1] and not docs[0] & docs[1]
  assert len(docs[0]) + len(docs[1]) == 120


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_exactly(files, tok_path, num_workers):
  cfg = _config(files, tok_path, num_workers=num_workers)
  with build_train_iterator(cfg) as it:
    _take(it, 7)
    state = json.loads(json.dumps(it.get_state()))  # checkpoints store it as JSON
    expected, stats = _take(it, 6), dict(it.stats.counts)
  with build_train_iterator(cfg) as it:
    it.set_state(state)
    _assert_same(_take(it, 6), expected)
    assert it.stats.counts == stats


def test_malformed_records_are_counted(tmp_path, tok_path):
  good = [{"text": f"fine {i}"} for i in range(10)]
  path = _write_jsonl(tmp_path / "mixed.jsonl", good[:5] + [
      b'{"text": "unterminated', b"\xff\xfe not utf8", b"[1, 2]", {"txt": "x"}, {"text": 5},
  ] + good[5:])
  chat = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": _chat(0)}, {"messages": "hi"},
                                                {"messages": [{"role": "robot", "content": ""}]}])
  trace = _write_jsonl(tmp_path / "trace.jsonl", [{"trace_text": format_trace(_trace(1))},
                                                  {"trace_text": "not a trace"}])
  totals = {}
  for kind, p in [("text", path), ("chat", chat), ("trace", trace)]:
    cfg = _config({}, tok_path, sources=(SourceConfig(kind, p, kind),), num_epochs=1,
                  batch_size=1, shuffle=False, seq_len=128)
    with build_train_iterator(cfg) as it:
      list(it)
      totals[kind] = {k: v for k, v in it.stats.counts.items() if v}
  assert totals["text"] == {"documents": 10, "bad_json": 2, "bad_utf8": 1, "bad_fields": 2}
  assert totals["chat"] == {"documents": 1, "bad_fields": 2}
  assert totals["trace"] == {"documents": 1, "bad_trace": 1}


def test_too_long_documents_dropped_and_counted(tmp_path, tok_path):
  path = _write_jsonl(tmp_path / "t.jsonl", [{"text": "x"}, {"text": "word " * 200}])
  cfg = _config({}, tok_path, sources=(SourceConfig("t", path, "text"),), num_epochs=1,
                batch_size=1, overflow="drop")
  with build_train_iterator(cfg) as it:
    assert len(list(it)) == 1
    assert it.stats.counts["too_long"] == 1 and it.stats.counts["documents"] == 2


@pytest.mark.parametrize("name,content,match", [
    ("junk.array_record", bytes(range(256)) * 4, "not a readable ArrayRecord file"),
    ("junk.jsonl", bytes(range(256)) * 4, "not a JSON Lines file"),
    ("words.jsonl", b"hello\nworld\n", "not a JSON Lines file"),
    ("table.parquet", b"PAR1", "not a readable Parquet file"),
    ("data.csv", b"a,b\n", "unknown data file type"),
], ids=["array_record", "binary_jsonl", "text_jsonl", "parquet", "csv"])
def test_bad_files_stop_with_an_error_naming_them(tmp_path, tok_path, name, content, match):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(ValueError, match=match) as e:
    build_train_iterator(_config({}, tok_path, sources=(SourceConfig("x", str(path), "text"),)))
  assert str(path) in str(e.value)


@pytest.mark.parametrize("change,match", [
    ({"sources": ()}, "sources is empty"),
    ({"seq_len": 0}, "seq_len"),
    ({"batch_size": -1}, "batch_size"),
    ({"overflow": "truncate"}, "overflow"),
    ({"shard_index": 2}, "shard_index"),
    ({"shard_count": None}, "both shard_index and shard_count"),
    ({"tokenizer_path": "/nonexistent/tok.model"}, "tokenizer_path"),
    ({"num_workers": -1}, "num_workers"),
    ({"seed": 1.5}, "seed"),
])
def test_bad_config_is_rejected(files, tok_path, change, match):
  with pytest.raises(ValueError, match=match):
    _config(files, tok_path, **change)


@pytest.mark.parametrize("kw,match", [
    ({"kind": "image"}, "kind"), ({"weight": 0.0}, "weight"), ({"paths": ()}, "paths is empty")])
def test_bad_source_config_is_rejected(kw, match):
  with pytest.raises(ValueError, match=match):
    SourceConfig(**{"name": "s", "paths": ("a.jsonl",), "kind": "text", **kw})


@pytest.mark.parametrize("name", ["missing.jsonl", "missing-*.jsonl"])
def test_missing_file(tmp_path, tok_path, name):
  with pytest.raises(FileNotFoundError, match=name.replace("*", r"\*")):
    build_train_iterator(_config({}, tok_path, sources=(
        SourceConfig("x", str(tmp_path / name), "text"),)))


def test_glob_paths_read_every_matching_file(tmp_path, tok_path):
  for i in range(3):
    _write_jsonl(tmp_path / f"part-{i}.jsonl", [{"text": f"part {i} line {j}"} for j in range(4)])
  cfg = _config({}, tok_path, sources=(SourceConfig("x", str(tmp_path / "part-*.jsonl"), "text"),),
                num_epochs=1, batch_size=1, seq_len=256)
  with build_train_iterator(cfg) as it:
    list(it)
  assert it.stats.counts["documents"] == 12


def test_loss_weights_follow_the_train_step_convention(files, tok_path):
  from cwm_jax.train.loss import next_token_targets
  with build_train_iterator(_config(files, tok_path)) as it:
    batch = next(it)
  targets, weights = next_token_targets(batch["tokens"], batch["loss_mask"], batch["segment_ids"])
  starts = batch["positions"] == 0  # a document's first token is never a target
  assert float(np.asarray(weights).sum()) == batch["loss_mask"][~starts].sum() > 0
  np.testing.assert_array_equal(np.asarray(targets)[:, :-1], batch["tokens"][:, 1:])


def _trajectory(n):
  messages = [{"role": "system", "content": "fix the bug"}, {"role": "user", "content": "issue"}]
  for i in range(n):
    messages += [{"role": "assistant", "content": f"<tool: bash>\nls {i}\n</tool>"},
                 {"role": "tool", "name": "bash", "content": f"<output>\nfile{i}.py\n</output>"}]
  return messages


def test_trajectory_observations_masked_half_the_time_reproducibly(tok_path):
  tok = load_tokenizer(tok_path)
  messages = _trajectory(100)
  raw = json.dumps({"messages": messages}).encode()
  doc = encode_record(raw, "trajectory", tok, seed=0)
  np.testing.assert_array_equal(doc["loss_mask"], encode_record(raw, "trajectory", tok)["loss_mask"])
  assert (doc["loss_mask"] != encode_record(raw, "trajectory", tok, seed=1)["loss_mask"]).any()
  trained = {}
  for seed in (0, 1):
    mask = encode_record(raw, "trajectory", tok, seed=seed)["loss_mask"]
    flags, end = [], 1  # after BOS
    for m in messages:
      end += len(encode_dialog_with_mask(tok, [m])[0]) - 1  # this message's header + body
      body = slice(end - sum(encode_dialog_with_mask(tok, [m], train_roles=ROLES)[1]), end)
      flags.append((m["role"], int(mask[body].all()), int(mask[body].any())))
    assert all(a == b for _, a, b in flags)  # each message is trained on whole or not at all
    assert all(f[1] for f in flags if f[0] != "tool")
    trained[seed] = np.mean([f[1] for f in flags if f[0] == "tool"])
  assert all(0.35 < p < 0.65 for p in trained.values()), trained


def test_dropped_trace_records_are_counted(tmp_path, tok_path):
  path = _write_jsonl(tmp_path / "t.jsonl", [
      {"status": "ok", "trace_text": format_trace(_trace(1))},
      {"status": "timeout", "trace_text": ""}])
  cfg = _config({}, tok_path, sources=(SourceConfig("t", path, "trace"),), num_epochs=1,
                batch_size=1, seq_len=128)
  with build_train_iterator(cfg) as it:
    assert len(list(it)) == 1
  assert it.stats.counts["trace_not_ok"] == 1 and it.stats.skipped == 1


def test_shard_defaults_to_the_jax_process(files, tok_path):
  cfg = _config(files, tok_path, shard_index=None, shard_count=None)
  assert cfg.shard() == (0, 1)


def test_parquet_source_reads_the_same_documents_as_jsonl(tmp_path, tok_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  texts = [f"document {i}: " + "word " * (i % 7) for i in range(50)]
  jsonl = _write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])
  parquet = str(tmp_path / "t.parquet")
  pq.write_table(pa.table({"text": texts, "extra": list(range(50))}), parquet, row_group_size=8)
  batches = {}
  for name, path in (("jsonl", jsonl), ("parquet", parquet)):
    cfg = _config({}, tok_path, sources=(SourceConfig("t", path, "text"),), num_epochs=1,
                  batch_size=2, shuffle=False, seq_len=64)
    with build_train_iterator(cfg) as it:
      batches[name] = list(it)
      assert it.stats.counts["documents"] == 50 and it.stats.skipped == 0
  assert len(batches["jsonl"]) > 0
  _assert_same(batches["jsonl"], batches["parquet"])
