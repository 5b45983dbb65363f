"""Counters of tracing outcomes: nothing is dropped without being counted (rule 8).

Statuses: ok, too_long (> max events or bytes), timeout, memory, error. Each result
also has a short `kind` (e.g. max_events, context_error, syntax_error) that the
counters keep per status, and one example reason per kind for the report.
"""

from __future__ import annotations

import collections
import dataclasses

STATUSES = ("ok", "too_long", "timeout", "memory", "error")


@dataclasses.dataclass
class TraceStats:
  statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  kinds: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: dict = dataclasses.field(default_factory=dict)  # "status/kind" -> a reason
  raised: int = 0  # ok traces whose entry function ended with an exception
  repr_fallbacks: int = 0  # values whose repr raised and were written with object.__repr__
  events: int = 0  # frames in ok traces
  num_bytes: int = 0  # trace text in ok traces

  def add(self, result) -> None:
    """Counts one `TraceResult` (data_pipelines.traces.trace)."""
    self.statuses[result.status] += 1
    self.repr_fallbacks += result.repr_fallbacks
    if result.status == "ok":
      self.events += len(result.trace.frames)
      self.num_bytes += result.num_bytes
      self.raised += result.exception is not None
    else:
      key = f"{result.status}/{result.kind}"
      self.kinds[key] += 1
      self.examples.setdefault(key, result.reason)

  def merge(self, other: TraceStats) -> None:
    self.statuses.update(other.statuses)
    self.kinds.update(other.kinds)
    for key, reason in other.examples.items():
      self.examples.setdefault(key, reason)
    self.raised += other.raised
    self.repr_fallbacks += other.repr_fallbacks
    self.events += other.events
    self.num_bytes += other.num_bytes

  @property
  def total(self) -> int:
    return sum(self.statuses.values())

  @property
  def dropped(self) -> int:
    return self.total - self.statuses["ok"]

  def to_dict(self) -> dict:
    return {"total": self.total, **{s: self.statuses[s] for s in STATUSES},
            "kinds": dict(sorted(self.kinds.items())),
            "examples": dict(sorted(self.examples.items())),
            "raised": self.raised, "repr_fallbacks": self.repr_fallbacks, "events": self.events,
            "bytes": self.num_bytes}

  def summary(self) -> str:
    """One line per status, then one per drop kind with an example reason."""
    lines = [f"traced {self.total}: " + ", ".join(f"{s} {self.statuses[s]}" for s in STATUSES) +
             f" (ok traces: {self.events} frames, {self.num_bytes} bytes, {self.raised} raised)"]
    for key, n in sorted(self.kinds.items()):
      lines.append(f"  {key}: {n}  e.g. {self.examples[key][:120]}")
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.summary()

