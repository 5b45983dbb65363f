"""`build_held_out_iterator(config)`: one pass over held-out data, each record read once.

Training repeats its sources forever and mixes them by weight (mixture.py). An
evaluation must instead read every held-out record at most once, so its numbers
do not depend on how many batches were asked for: this iterator reads this
process's shard of each source once, the sources one after the other (a
weighted mix of finite sources would stop at the first exhausted one), packs
rows exactly as training does, and ends when the last source is exhausted.
The last batch is filled up with padding rows (segment id 0, loss_mask 0: no
targets), so every batch has the fixed shape [batch_size, seq_len] and the
padding adds nothing to a loss sum.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
from absl import logging

from data_pipelines.pipeline.config import PipelineConfig
from data_pipelines.pipeline.loader import BATCH_KEYS
from data_pipelines.pipeline.mixture import packed_source
from data_pipelines.pipeline.pack import make_row
from data_pipelines.pipeline.stats import PipelineStats


class HeldOutIterator:
  """Batches {"tokens", "positions", "segment_ids", "loss_mask"} of int32 [B, T] over one
  pass of the held-out sources; `rows` counts the real (non-padding) rows yielded and
  `stats` the records read and skipped. close() (or `with`) when done."""

  def __init__(self, config: PipelineConfig):
    self.config = dataclasses.replace(config, num_epochs=1)
    shard = self.config.shard()
    sources = range(len(self.config.sources))
    # Each source's pipeline is built only when the previous one is exhausted.
    self._rows = itertools.chain.from_iterable(
        iter(packed_source(self.config, i, shard)) for i in sources)
    self.stats = PipelineStats()
    self.rows = 0
    self._done = False

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, Any]:
    if self._done:
      raise StopIteration
    batch_size, seq_len = self.config.batch_size, self.config.seq_len
    rows = list(itertools.islice(self._rows, batch_size))
    for row in rows:
      self.stats.add(row.pop("stats"))
    self.rows += len(rows)
    if len(rows) < batch_size:
      self._finish()
      if not rows:
        raise StopIteration
    rows += [make_row([], seq_len) for _ in range(batch_size - len(rows))]
    return {k: np.stack([row[k] for row in rows]) for k in BATCH_KEYS}

  def _finish(self) -> None:
    self._done = True
    if self.stats.skipped:
      logging.warning("held-out data: %d records skipped (%s)", self.stats.skipped, self.stats)

  def close(self) -> None:
    self._done = True

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def build_held_out_iterator(config: PipelineConfig) -> HeldOutIterator:
  """One pass over `config.sources` (this process's shard), `config.batch_size` rows a batch.

  `num_epochs` is ignored (always one pass); `shuffle` and `seed` apply as in training.
  """
  if not isinstance(config, PipelineConfig):
    raise TypeError(f"build_held_out_iterator needs a PipelineConfig, got "
                    f"{type(config).__name__}.")
  return HeldOutIterator(config)
