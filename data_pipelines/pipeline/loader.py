"""`build_train_iterator(config)`: batches for `cwm_jax.train.step` with checkpointable state.

Each batch is {"tokens", "positions", "segment_ids", "loss_mask"} of np.int32 [B, T]
(see pack.py for their meaning). `TrainIterator.get_state()` is a JSON-friendly dict
(grain state + skip counts); `set_state` on an iterator built from the same config
continues with exactly the batches the saved one would have produced next.

With num_workers=N > 0 each grain worker process reads every N-th record of each
source (after this process's shard), packs and mixes them, and workers' batches are
interleaved round-robin: deterministic for a given N, but a different stream than
N=0, so restore a state with the same num_workers. A finite run (num_epochs) drops
the last partial batch (and the counts it carried).
"""

from __future__ import annotations

from typing import Any

import grain
from absl import flags, logging

from data_pipelines.pipeline.config import PipelineConfig
from data_pipelines.pipeline.mixture import mixed_rows
from data_pipelines.pipeline.stats import PipelineStats

BATCH_KEYS = ("tokens", "positions", "segment_ids", "loss_mask")


def build_train_dataset(config: PipelineConfig) -> grain.IterDataset:
  """The grain IterDataset of batches (each with an extra "stats" [B, R] entry)."""
  batches = mixed_rows(config).batch(config.batch_size, drop_remainder=True)
  if config.num_workers > 0:
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
  return batches


class TrainIterator:
  """Iterator of train batches that counts skipped records (`stats`); close() when done."""

  def __init__(self, config: PipelineConfig, log_every: int = 1000):
    self.config = config
    self.stats = PipelineStats()
    self._iterator = iter(build_train_dataset(config))
    self._log_every, self._batches, self._logged_skipped = log_every, 0, 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, Any]:
    batch = next(self._iterator)
    self.stats.add(batch.pop("stats"))
    self._batches += 1
    # Log every log_every batches, and at once when records are first skipped.
    if self._batches % self._log_every == 0 or (self.stats.skipped and not self._logged_skipped):
      self._logged_skipped = self.stats.skipped
      log = logging.warning if self.stats.skipped else logging.info
      log("data pipeline after %d batches: %s", self._batches, self.stats)
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"grain": self._iterator.get_state(), "stats": dict(self.stats.counts),
            "batches": self._batches}

  def set_state(self, state: dict[str, Any]) -> None:
    self._iterator.set_state(state["grain"])
    self.stats = PipelineStats(dict(state["stats"]))
    self._batches, self._logged_skipped = state["batches"], self.stats.skipped

  def close(self) -> None:
    """Stops grain worker processes (if any)."""
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def build_train_iterator(config: PipelineConfig) -> TrainIterator:
  if not isinstance(config, PipelineConfig):
    raise TypeError(f"build_train_iterator needs a PipelineConfig, got {type(config).__name__}.")
  return TrainIterator(config)
