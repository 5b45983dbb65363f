"""All 200 CruxEval dev records: traced return value == the stored output (which the
data README verified equals repr(f(input)) in a plain Python 3.11 run), and every
trace survives format -> parse (text) unchanged."""

import os

import pytest

from data_pipelines.traces import executors
from data_pipelines.traces.format import format_trace
from data_pipelines.traces.parse import parse_trace
from data_pipelines.traces.sources import cruxeval_requests, read_jsonl
from data_pipelines.traces.stats import TraceStats
from data_pipelines.traces.trace import trace_requests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
CRUXEVAL_DEV = os.environ.get(
    "CRUXEVAL_DEV", os.path.join(os.path.dirname(REPO), "shared", "data", "cruxeval_dev.jsonl"))


@pytest.fixture(scope="module")
def cruxeval():
  if not os.path.exists(CRUXEVAL_DEV):
    pytest.skip(f"{CRUXEVAL_DEV} not found")
  records = read_jsonl(CRUXEVAL_DEV)
  stats = TraceStats()
  results = trace_requests(cruxeval_requests(records),
                           executor=executors.unsandboxed_subprocess_executor, batch_size=50,
                           num_workers=2, stats=stats)
  return records, results, stats


def test_every_record_traces_to_its_stored_output(cruxeval):
  records, results, stats = cruxeval
  assert len(records) == 200
  assert stats.statuses["ok"] == 200, stats.summary()
  mismatched = [(rec["id"], r.trace.return_value, rec["output"])
                for rec, r in zip(records, results) if r.trace.return_value != rec["output"]]
  assert not mismatched
  assert [r.id for r in results] == [rec["id"] for rec in records]


def test_every_trace_round_trips_through_text(cruxeval):
  _, results, _ = cruxeval
  for result in results:
    text = format_trace(result.trace)
    assert parse_trace(text) == result.trace
    assert len(text.encode()) == result.num_bytes
