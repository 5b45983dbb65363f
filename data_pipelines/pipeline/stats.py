"""Counts of what the pipeline kept, split and skipped, carried through grain as data.

Every tokenized document and every packed row carries an int64 vector `stats`
indexed by STAT_NAMES, so counts made inside grain worker processes reach the main
process with the batches (and survive checkpoint/restore with the iterator state).
"""

from __future__ import annotations

import dataclasses

import numpy as np

STAT_NAMES = (
    "documents",    # records tokenized into a document
    "bad_utf8",     # record bytes are not UTF-8
    "bad_json",     # record is not a JSON object
    "bad_fields",   # JSON object lacks the fields of its kind, or they have wrong types
    "bad_trace",    # `trace_text` does not parse as a canonical trace
    "trace_not_ok", # trace record of a dropped request (status != "ok")
    "empty",        # document with no tokens
    "too_long",     # document longer than seq_len, dropped (overflow="drop")
    "split",        # document longer than seq_len, cut into pieces (overflow="split")
)
SKIP_NAMES = ("bad_utf8", "bad_json", "bad_fields", "bad_trace", "trace_not_ok", "empty",
              "too_long")
INDEX = {name: i for i, name in enumerate(STAT_NAMES)}


def one_hot(name: str) -> np.ndarray:
  v = np.zeros(len(STAT_NAMES), np.int64)
  v[INDEX[name]] = 1
  return v


def zeros() -> np.ndarray:
  return np.zeros(len(STAT_NAMES), np.int64)


@dataclasses.dataclass
class PipelineStats:
  """Running totals; `skipped` is the number of records or documents not trained on."""
  counts: dict[str, int] = dataclasses.field(
      default_factory=lambda: {name: 0 for name in STAT_NAMES})

  def add(self, vector) -> None:
    vector = np.asarray(vector).reshape(-1, len(STAT_NAMES)).sum(0)
    for name, v in zip(STAT_NAMES, vector):
      self.counts[name] += int(v)

  @property
  def skipped(self) -> int:
    return sum(self.counts[name] for name in SKIP_NAMES)

  def __str__(self) -> str:
    return " ".join(f"{k}={v}" for k, v in self.counts.items())
