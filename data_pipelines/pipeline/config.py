"""The frozen config of a training input pipeline, validated once at construction."""

from __future__ import annotations

import dataclasses
import os

from data_pipelines.pipeline.documents import KINDS
from data_pipelines.pipeline.pack import OVERFLOW


@dataclasses.dataclass(frozen=True)
class SourceConfig:
  """One mixture component: files of one record kind and its share of the rows.

  `weight` is the fraction of packed rows (so, up to padding, of tokens) that come
  from this source; weights are normalised over the sources.
  """
  name: str
  paths: tuple[str, ...]  # files; glob patterns are expanded (sorted)
  kind: str  # text | trace | chat | trajectory (documents.py)
  weight: float = 1.0

  def __post_init__(self):
    if isinstance(self.paths, (str, os.PathLike)):
      object.__setattr__(self, "paths", (os.fspath(self.paths),))
    object.__setattr__(self, "paths", tuple(os.fspath(p) for p in self.paths))
    if not self.name:
      raise ValueError("SourceConfig.name must be a non-empty string.")
    if not self.paths:
      raise ValueError(f"source {self.name!r}: paths is empty; give at least one data file.")
    if self.kind not in KINDS:
      raise ValueError(f"source {self.name!r}: kind {self.kind!r} is not one of {KINDS}.")
    if not self.weight > 0:
      raise ValueError(f"source {self.name!r}: weight must be > 0, got {self.weight}.")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Everything `build_train_iterator` needs.

  shard_index/shard_count default to jax.process_index()/process_count(): each process
  reads a disjoint slice of every source. num_epochs=None repeats forever (each epoch
  reshuffled); a finite value ends the iterator when the first source runs out.
  """
  sources: tuple[SourceConfig, ...]
  tokenizer_path: str
  seq_len: int
  batch_size: int
  seed: int = 0
  train_on_context: bool = False  # traces: also train on the source context
  overflow: str = "split"  # documents longer than seq_len: "split" into pieces or "drop"
  pack_open_rows: int = 8  # rows open at once for first-fit packing (1: greedy, in order)
  shuffle: bool = True
  num_epochs: int | None = None
  num_workers: int = 0  # grain worker processes (0: all in this process)
  shard_index: int | None = None
  shard_count: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "sources", tuple(self.sources))
    if not self.sources:
      raise ValueError("PipelineConfig.sources is empty: give at least one SourceConfig.")
    for s in self.sources:
      if not isinstance(s, SourceConfig):
        raise ValueError(f"PipelineConfig.sources must hold SourceConfig, got {type(s).__name__}.")
    names = [s.name for s in self.sources]
    if len(set(names)) != len(names):
      raise ValueError(f"source names must be unique, got {names}.")
    for field in ("seq_len", "batch_size"):
      if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
        raise ValueError(f"PipelineConfig.{field} must be a positive int, got "
                         f"{getattr(self, field)!r}.")
    if self.seq_len < 2:
      raise ValueError(f"PipelineConfig.seq_len must be >= 2, got {self.seq_len}.")
    if not isinstance(self.seed, int) or not -2**63 <= self.seed < 2**63:
      raise ValueError(f"PipelineConfig.seed must be an int64, got {self.seed!r}.")
    if self.overflow not in OVERFLOW:
      raise ValueError(f"PipelineConfig.overflow must be one of {OVERFLOW}, got {self.overflow!r}.")
    if not isinstance(self.pack_open_rows, int) or self.pack_open_rows < 1:
      raise ValueError(f"PipelineConfig.pack_open_rows must be an int >= 1, got "
                       f"{self.pack_open_rows!r}.")
    if not isinstance(self.num_workers, int) or self.num_workers < 0:
      raise ValueError(f"PipelineConfig.num_workers must be an int >= 0, got {self.num_workers!r}.")
    if self.num_epochs is not None and (not isinstance(self.num_epochs, int) or self.num_epochs < 1):
      raise ValueError(f"PipelineConfig.num_epochs must be None or an int >= 1, got "
                       f"{self.num_epochs!r}.")
    if (self.shard_index is None) != (self.shard_count is None):
      raise ValueError("PipelineConfig: set both shard_index and shard_count, or neither.")
    if self.shard_count is not None and not 0 <= self.shard_index < self.shard_count:
      raise ValueError(f"PipelineConfig: need 0 <= shard_index < shard_count, got "
                       f"{self.shard_index} and {self.shard_count}.")
    if not os.path.exists(self.tokenizer_path):
      raise ValueError(f"PipelineConfig.tokenizer_path {self.tokenizer_path!r} does not exist.")

  def shard(self) -> tuple[int, int]:
    if self.shard_count is not None:
      return self.shard_index, self.shard_count
    import jax  # only when not given: keeps worker processes free of JAX
    return jax.process_index(), jax.process_count()
