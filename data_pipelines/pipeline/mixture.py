"""Per-source pipelines (shard -> shuffle -> repeat -> tokenize -> pack) and their mix."""

from __future__ import annotations

import grain

from data_pipelines.pipeline.config import PipelineConfig, SourceConfig
from data_pipelines.pipeline.documents import TokenizeRecord
from data_pipelines.pipeline.pack import PackIterDataset
from data_pipelines.pipeline.sources import open_sources


def source_records(source: SourceConfig, shard_index: int, shard_count: int) -> grain.MapDataset:
  """This process's disjoint slice (every shard_count-th record) of a source's files."""
  records = open_sources(source.paths)
  if len(records) < shard_count:
    raise ValueError(f"source {source.name!r} has {len(records)} records, fewer than the "
                     f"{shard_count} shards (processes) that read it.")
  return records[shard_index::shard_count]


def packed_source(config: PipelineConfig, i: int, shard: tuple[int, int]) -> grain.IterDataset:
  source = config.sources[i]
  records = source_records(source, *shard)
  if config.shuffle:
    # A different seed per source; grain reshuffles every epoch of the repeat.
    records = records.shuffle(seed=(config.seed * 1_000_003 + i) % 2**32)
  records = records.repeat(config.num_epochs)
  docs = records.map(TokenizeRecord(source.kind, config.tokenizer_path, config.train_on_context,
                                    config.seed))
  return PackIterDataset(docs.to_iter_dataset(), config.seq_len, overflow=config.overflow,
                         open_rows=config.pack_open_rows)


def mixed_rows(config: PipelineConfig) -> grain.IterDataset:
  """Packed rows of all sources, interleaved deterministically in proportion to weights."""
  shard = config.shard()
  rows = {s.name: packed_source(config, i, shard) for i, s in enumerate(config.sources)}
  if len(rows) == 1:
    return next(iter(rows.values()))
  return grain.IterDataset.mix(rows, {s.name: s.weight for s in config.sources})
