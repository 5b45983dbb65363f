"""`--source` specs -> trace requests for the generation jobs.

    cruxeval:PATH        CruxEval JSONL records {id, code, input}
    jsonl:PATH           JSONL records with {context[, stdin][, id]} (CONTEXT already
                         marked) or CruxEval-style {code, input[, id]}
    synthetic:SEED:N     N programs of data_pipelines.programs.generate_programs(SEED, N)
                         (CruxEval-format records; imported only when asked for)

Every request gets an id: the record's `id`, else "<kind>-<index>".
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping

from data_pipelines.traces.sources import TraceRequest, cruxeval_context, read_jsonl

KINDS = ("cruxeval", "jsonl", "synthetic")
SPEC_HELP = "cruxeval:PATH | jsonl:PATH | synthetic:SEED:N"


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  kind: str  # one of KINDS
  path: str = ""
  seed: int = 0
  n: int = 0

  def __str__(self) -> str:
    return f"{self.kind}:{self.seed}:{self.n}" if self.kind == "synthetic" else \
        f"{self.kind}:{self.path}"


def parse_source(spec: str) -> SourceSpec:
  """`--source` text -> SourceSpec, or ValueError naming what was expected."""
  kind, sep, rest = str(spec).partition(":")
  if not sep or kind not in KINDS or not rest:
    raise ValueError(f"--source={spec!r}: expected {SPEC_HELP}")
  if kind == "synthetic":
    parts = rest.split(":")
    try:
      seed, n = (int(p) for p in parts)
    except ValueError:
      raise ValueError(f"--source={spec!r}: expected synthetic:SEED:N with integers "
                       "SEED and N") from None
    if n < 0:
      raise ValueError(f"--source={spec!r}: N must be >= 0")
    return SourceSpec(kind, seed=seed, n=n)
  if not os.path.isfile(rest):
    raise ValueError(f"--source={spec!r}: {rest} is not a file")
  return SourceSpec(kind, path=rest)


def _record_request(kind: str, n: int, record: Mapping) -> TraceRequest:
  if not isinstance(record, Mapping):
    raise ValueError(f"{kind} record {n}: expected a JSON object, got {type(record).__name__}")
  rid = str(record["id"]) if record.get("id") is not None else f"{kind}-{n}"
  if kind == "jsonl" and "context" in record:
    if not isinstance(record["context"], str) or not isinstance(record.get("stdin", ""), str):
      raise ValueError(f"jsonl record {n} ({rid}): 'context' and 'stdin' must be strings")
    return TraceRequest(record["context"], record.get("stdin", ""), rid)
  if not isinstance(record.get("code"), str) or not isinstance(record.get("input"), str):
    expected = "str fields 'code' and 'input'" + (" (or 'context')" if kind == "jsonl" else "")
    raise ValueError(f"{kind} record {n} ({rid}): expected {expected}, got keys "
                     f"{sorted(record)}")
  return TraceRequest(cruxeval_context(record["code"], record["input"]), "", rid)


def records_to_requests(kind: str, records: Iterable[Mapping]) -> list[TraceRequest]:
  return [_record_request(kind, n, r) for n, r in enumerate(records)]


def synthetic_generator():
  """data_pipelines.programs' `generate_programs(seed, n)`, imported when first asked for."""
  import importlib  # pylint: disable=import-outside-toplevel
  errors = []
  for module in ("data_pipelines.programs", "data_pipelines.programs.generate"):
    try:
      return getattr(importlib.import_module(module), "generate_programs")
    except (ImportError, AttributeError) as e:
      errors.append(f"{module}: {e}")
  raise ValueError("--source=synthetic:SEED:N needs data_pipelines.programs.generate_programs, "
                   "which is not available (" + "; ".join(errors) + ")")


def synthetic_records(seed: int, n: int) -> Iterable[Mapping]:
  return synthetic_generator()(seed, n)


def load_requests(spec: SourceSpec | str) -> list[TraceRequest]:
  """All requests of a source, in source order (the order shards are cut from)."""
  if isinstance(spec, str):
    spec = parse_source(spec)
  if spec.kind == "synthetic":
    return records_to_requests("synthetic", synthetic_records(spec.seed, spec.n))
  return records_to_requests(spec.kind, read_jsonl(spec.path))
