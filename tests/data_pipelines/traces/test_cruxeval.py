"""All 200 CruxEval dev records, traced in the bubblewrap sandbox: the traced return
value equals repr(f(input)) from a plain (untraced) sandboxed run of the same calls
and the stored output, and every trace survives format -> parse (text) unchanged."""

import json
import os
import shutil

import pytest

from cwm_jax import sandbox

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
  if shutil.which("bwrap") is None:
    pytest.skip("bubblewrap is not installed (apt-get install -y bubblewrap)")
  records = read_jsonl(CRUXEVAL_DEV)
  stats = TraceStats()
  results = trace_requests(cruxeval_requests(records), executor=executors.sandbox_executor,
                           batch_size=50, num_workers=2, stats=stats)
  return records, results, stats


PLAIN_RUN = """
import json, sys
out = []
for code, arg in json.load(sys.stdin):
  ns = {"__name__": "__main__"}
  exec(code, ns)
  out.append(repr(eval("f(" + arg + ")", ns)))
print(json.dumps(out))
"""


def test_traced_return_values_equal_a_plain_sandboxed_run(cruxeval):
  records, results, _ = cruxeval
  calls = json.dumps([[rec["code"], rec["input"]] for rec in records])
  plain = sandbox.run_python(PLAIN_RUN, stdin=calls, timeout_s=60)
  assert plain.ok, plain.stderr
  expected = json.loads(plain.stdout)
  assert [r.trace.return_value for r in results] == expected


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
