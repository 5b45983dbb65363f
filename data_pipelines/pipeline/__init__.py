"""grain input pipelines: sources -> records -> tokens -> packed rows -> mixture -> batches.

Entry points: `build_train_iterator(PipelineConfig(...))` (loader.py) for training,
`build_held_out_iterator` (held_out.py) for one pass over held-out data. See each module.
"""

from data_pipelines.pipeline.config import PipelineConfig, SourceConfig
from data_pipelines.pipeline.held_out import HeldOutIterator, build_held_out_iterator
from data_pipelines.pipeline.loader import TrainIterator, build_train_dataset, build_train_iterator
from data_pipelines.pipeline.stats import STAT_NAMES, PipelineStats

__all__ = ["PipelineConfig", "SourceConfig", "TrainIterator", "build_train_dataset",
           "build_train_iterator", "HeldOutIterator", "build_held_out_iterator", "STAT_NAMES",
           "PipelineStats"]
