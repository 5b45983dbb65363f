"""grain input pipelines: sources -> records -> tokens -> packed rows -> mixture -> batches.

Entry point: `build_train_iterator(PipelineConfig(...))` (loader.py). See each module.
"""

from data_pipelines.pipeline.config import PipelineConfig, SourceConfig
from data_pipelines.pipeline.loader import TrainIterator, build_train_dataset, build_train_iterator
from data_pipelines.pipeline.stats import STAT_NAMES, PipelineStats

__all__ = ["PipelineConfig", "SourceConfig", "TrainIterator", "build_train_dataset",
           "build_train_iterator", "STAT_NAMES", "PipelineStats"]
