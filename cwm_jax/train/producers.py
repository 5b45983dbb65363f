"""Batch producers and step hooks: what `train()` takes batches from, and what it
tells after each step.

A `BatchProducer` yields this process's share of each batch (a dict of numpy
[B_local, T] / [B_local] arrays, as the objective reads them) and has a state the
checkpoint holds, so exact resume, SIGTERM saving, the NaN policy and metrics
hold for any producer:

    next(producer) -> batch           get_state() -> JSON-able dict
    set_state(state)                  close()
    metrics() -> {name: number}       (logged with the step that consumed the batch)

The grain pipeline is one producer (`GrainProducer`); RL rollouts are another.
A `StepHook` is called after every optimizer step with the new state, the step
number and the step's (device) metrics, e.g. to push new weights to a sampler.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

from cwm_jax.train.state import TrainState

StepHook = Callable[[TrainState, int, dict], None]


@runtime_checkable
class BatchProducer(Protocol):
  def __next__(self) -> dict: ...

  def get_state(self) -> dict: ...

  def set_state(self, state: dict) -> None: ...

  def close(self) -> None: ...

  def metrics(self) -> dict: ...


class GrainProducer:
  """The grain input pipeline (`data_pipelines.pipeline`) as a producer; its
  metrics are the pipeline's skip counters (`data/<reason>`)."""

  def __init__(self, pipeline_config):
    from data_pipelines.pipeline import build_train_iterator  # pylint: disable=import-outside-toplevel
    self._iterator = build_train_iterator(pipeline_config)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return next(self._iterator)

  def get_state(self) -> dict[str, Any]:
    return self._iterator.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._iterator.set_state(state)

  def close(self) -> None:
    self._iterator.close()

  def metrics(self) -> dict:
    return {f"data/{k}": v for k, v in self._iterator.stats.counts.items()}


def check_producer(producer) -> None:
  """A clear error for an object that cannot feed the loop."""
  missing = [m for m in ("__next__", "get_state", "set_state", "close", "metrics")
             if not callable(getattr(producer, m, None))]
  if missing:
    raise TypeError(f"train: the batch producer {type(producer).__name__} lacks {missing}; "
                    "a producer has __next__, get_state, set_state, close and metrics "
                    "(cwm_jax.train.producers.BatchProducer).")
