"""Trace generation job: shards + manifest over CruxEval dev, read-back through
ArrayRecord and the strict parser, resume after deleting a shard, bad sources."""

import dataclasses
import json
import os

import pytest

from data_pipelines.generate import shards
from data_pipelines.generate import sources as gen_sources
from data_pipelines.generate import traces as gen
from data_pipelines.traces import executors
from data_pipelines.traces.format import format_trace
from data_pipelines.traces.parse import parse_trace
from data_pipelines.traces.sources import cruxeval_requests, read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
CRUXEVAL_DEV = os.environ.get(
    "CRUXEVAL_DEV", os.path.join(os.path.dirname(REPO), "shared", "data", "cruxeval_dev.jsonl"))
N = 60
STATUSES = ("ok", "too_long", "timeout", "memory", "error")
UNSANDBOXED = not executors.sandbox_available()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """The first N CruxEval records plus two that are dropped (an error and too long)."""
  if not os.path.exists(CRUXEVAL_DEV):
    pytest.skip(f"{CRUXEVAL_DEV} not found")
  records = read_jsonl(CRUXEVAL_DEV)[:N]
  records += [{"id": "bad_syntax", "code": "def f(x):\n    return x +", "input": "1"},
              {"id": "long_loop", "code": "def f(n):\n    s = 0\n    for i in range(n):\n"
               "        s += i\n    return s", "input": "100000"}]
  path = tmp_path_factory.mktemp("src") / "records.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return f"cruxeval:{path}", records


def _job(source_spec, out_dir, num_shards=4):
  return gen.TraceJob(source_spec, str(out_dir), num_shards, batch_size=16,
                      unsandboxed=UNSANDBOXED)


@pytest.fixture(scope="module")
def finished(source, tmp_path_factory):
  out = tmp_path_factory.mktemp("out")
  manifest = gen.run_job(_job(source[0], out), num_workers=2)
  return out, manifest


def test_manifest_counts_add_up(source, finished):
  out, manifest = finished
  records = source[1]
  total = manifest["total"]
  assert manifest["num_records"] == total["total"] == len(records)
  assert sum(total[s] for s in STATUSES) == total["total"]
  assert total["ok"] == N
  assert total["too_long"] == 1 and total["error"] == 1
  assert sum(total["kinds"].values()) == total["total"] - total["ok"]
  assert [s["counts"]["total"] for s in manifest["shards"]] == [
      b - a for a, b in (shards.shard_range(k, 4, len(records)) for k in range(4))]
  for status in STATUSES:
    assert sum(s["counts"][status] for s in manifest["shards"]) == total[status]
  on_disk = shards.read_manifest(os.path.join(out, shards.JOB_MANIFEST))
  assert on_disk == json.loads(json.dumps(manifest))


def test_array_record_shards_hold_parseable_canonical_traces(source, finished):
  out, _ = finished
  records = list(shards.iter_shard_records(str(out)))
  expected = cruxeval_requests(source[1])
  assert [r["id"] for r in records] == [q.id for q in expected]
  assert [r["context"] for r in records] == [q.context for q in expected]
  by_id = {r["id"]: r for r in source[1]}
  for r in records:
    if r["status"] != "ok":
      assert r["trace_text"] == "" and r["kind"] and r["reason"]
      continue
    trace = parse_trace(r["trace_text"])
    assert format_trace(trace) == r["trace_text"]
    assert trace.context == r["context"]
    assert len(trace.frames) == r["num_events"]
    assert len(r["trace_text"].encode("utf-8")) == r["num_bytes"]
    assert trace.return_value == by_id[r["id"]]["output"]


def test_jsonl_copies_match_array_records(finished):
  out, manifest = finished
  for shard in manifest["shards"]:
    from_ar = shards.read_array_record(os.path.join(out, shard["array_record"]))
    with open(os.path.join(out, shard["jsonl"]), encoding="utf-8") as f:
      assert [json.loads(line) for line in f] == from_ar


def test_resume_recomputes_only_the_missing_shard(source, tmp_path):
  job = _job(source[0], tmp_path, num_shards=3)
  first = gen.run_job(job)
  assert first["recomputed_shards"] == [0, 1, 2]
  paths = [shards.shard_paths(str(tmp_path), k, 3) for k in range(3)]
  before = {p: open(p, "rb").read() for k in range(3) for p in (paths[k]["jsonl"],)}
  ar_before = [shards.read_array_record(p["array_record"]) for p in paths]
  mtimes = {k: os.stat(paths[k]["array_record"]).st_mtime_ns for k in range(3)}
  os.remove(paths[1]["array_record"])
  second = gen.run_job(job)
  assert second["recomputed_shards"] == [1]
  assert {k: os.stat(paths[k]["array_record"]).st_mtime_ns for k in (0, 2)} == {
      k: mtimes[k] for k in (0, 2)}
  assert [shards.read_array_record(p["array_record"]) for p in paths] == ar_before
  assert {p: open(p, "rb").read() for p in before} == before
  assert second["total"] == first["total"]
  assert gen.run_job(job)["recomputed_shards"] == []


def test_beam_direct_runner_writes_the_same_shards(source, finished, tmp_path):
  pytest.importorskip("apache_beam")
  job = _job(source[0], tmp_path)
  manifest = gen.run_job(job, runner="DirectRunner", num_workers=1)
  assert manifest["total"] == finished[1]["total"]
  for shard in manifest["shards"]:
    with open(os.path.join(tmp_path, shard["jsonl"]), "rb") as a, \
         open(os.path.join(finished[0], shard["jsonl"]), "rb") as b:
      assert a.read() == b.read()
  os.remove(shards.shard_paths(str(tmp_path), 2, 4)["manifest"])
  assert gen.run_job(job, runner="DirectRunner", num_workers=1)["recomputed_shards"] == [2]


def test_resume_refuses_another_job_in_the_same_dir(source, tmp_path):
  gen.run_job(dataclasses.replace(_job(source[0], tmp_path, 2), limit=5))
  with pytest.raises(ValueError, match="another job"):
    gen.run_job(dataclasses.replace(_job(source[0], tmp_path, 3), limit=5))


@pytest.mark.parametrize("spec,match", [
    ("cruxeval", "expected cruxeval:PATH"),
    ("nosuch:/tmp/x", "expected cruxeval:PATH"),
    ("jsonl:/no/such/file.jsonl", "is not a file"),
    ("synthetic:1", "synthetic:SEED:N"),
    ("synthetic:a:3", "synthetic:SEED:N"),
])
def test_bad_source_spec_is_a_clear_error(spec, match, tmp_path, capsys):
  with pytest.raises(ValueError, match=match):
    gen_sources.parse_source(spec)
  assert gen.main([f"--source={spec}", f"--out={tmp_path}", "--num_shards=2"]) == 2
  assert match.split(":")[0] in capsys.readouterr().err


def test_synthetic_source(tmp_path):
  try:
    gen_sources.synthetic_generator()
  except ValueError:
    with pytest.raises(ValueError, match="generate_programs"):
      gen_sources.load_requests("synthetic:0:3")
    return
  requests = gen_sources.load_requests("synthetic:0:3")
  assert len(requests) == 3
  assert requests == gen_sources.load_requests("synthetic:0:3")  # seeded


def test_bad_records_name_the_record(tmp_path):
  path = tmp_path / "r.jsonl"
  path.write_text('{"id": "a", "code": "def f(x): return x", "input": "1"}\n{"id": "b"}\n')
  with pytest.raises(ValueError, match=r"record 1 \(b\)"):
    gen_sources.load_requests(f"cruxeval:{path}")


def test_jsonl_source_takes_contexts(tmp_path):
  path = tmp_path / "r.jsonl"
  context = "def main():  # << START_OF_TRACE\n    return 1 + 1\n"
  path.write_text(json.dumps({"context": context}) + "\n" +
                  json.dumps({"code": "def f(x):\n    return x", "input": "3"}) + "\n")
  requests = gen_sources.load_requests(f"jsonl:{path}")
  assert [q.id for q in requests] == ["jsonl-0", "jsonl-1"]
  assert requests[0].context == context


def test_cli_writes_shards(source, tmp_path, capsys):
  argv = [f"--source={source[0]}", f"--out={tmp_path}", "--num_shards=2", "--limit=6",
          "--direct_num_workers=1"] + (["--unsandboxed"] if UNSANDBOXED else [])
  assert gen.main(argv) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ok"] == 6
  assert all(shards.is_finished(str(tmp_path), k, 2) for k in range(2))


def test_retrying_executor_reruns_harness_failures():
  calls = []

  def flaky(program, *, stdin, timeout_s, memory_mb):
    calls.append(program)
    if len(calls) <= 2:
      return executors.ExecOutput("", "could not start the sandbox", None)
    return executors.ExecOutput("out", "", 0)

  flaky.output_limit_bytes = 123
  executor = gen.RetryingExecutor(flaky, attempts=4, backoff_s=0)
  assert executor.output_limit_bytes == 123
  assert executor("p", stdin="", timeout_s=1, memory_mb=1).stdout == "out"
  assert executor.retries == 2 and len(calls) == 3
  timed_out = executors.ExecOutput("", "", None, timed_out=True)
  once = gen.RetryingExecutor(lambda *a, **k: timed_out, backoff_s=0)
  assert once("p", stdin="", timeout_s=1, memory_mb=1) is timed_out and once.retries == 0
