"""What a stage config names: its objective, its batch producer and its eval hooks.

    config.train.objective = "cross_entropy"      # OBJECTIVE_FACTORIES
    config.data.producer = "grain"                # PRODUCER_FACTORIES
    config.train.eval_hooks = ("trace_metrics",)  # EVAL_HOOK_FACTORIES

Each registry maps a name to a factory of the validated `ExperimentConfig`; RL and
forked stages add theirs with `register(...)`. `train(cfg, workdir)` builds
what the config names; passing objects to `train` overrides them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from cwm_jax.train.objectives import Objective, cross_entropy
from cwm_jax.train.producers import GrainProducer


def _cross_entropy(cfg) -> Objective:
  return cross_entropy(cfg.model, loss_chunk=cfg.train.loss_chunk, z_loss=cfg.train.z_loss)


def _grain(cfg) -> GrainProducer:
  """This process's share of the configured grain mixture."""
  from cwm_jax.train.config import pipeline_config  # pylint: disable=import-outside-toplevel
  pipeline = pipeline_config(cfg)
  if jax.process_count() > 1:
    pipeline = dataclasses.replace(pipeline, batch_size=cfg.data.batch_size // jax.process_count())
  return GrainProducer(pipeline)


def _grpo(cfg) -> Objective:
  from cwm_jax.rl.run import rl_objective  # pylint: disable=import-outside-toplevel
  return rl_objective(cfg)


def _rollouts(cfg):
  del cfg
  from cwm_jax.train.config import ConfigError  # pylint: disable=import-outside-toplevel
  raise ConfigError("config.data.producer='rollouts' is built by the RL stage: run it through "
                    "experiments.main (stage 'rl') or cwm_jax.rl.run.train_rl.")


def _trace_metrics(cfg):
  from cwm_jax.train.trace_eval_hook import TraceMetricsHook  # pylint: disable=import-outside-toplevel
  return TraceMetricsHook(cfg)


OBJECTIVE_FACTORIES: dict[str, Callable] = {"cross_entropy": _cross_entropy, "grpo": _grpo}
PRODUCER_FACTORIES: dict[str, Callable] = {"grain": _grain, "rollouts": _rollouts}
EVAL_HOOK_FACTORIES: dict[str, Callable] = {"trace_metrics": _trace_metrics}
_REGISTRIES = {"objective": OBJECTIVE_FACTORIES, "producer": PRODUCER_FACTORIES,
               "eval_hook": EVAL_HOOK_FACTORIES}


def register(kind: str, name: str, factory: Callable) -> None:
  """Adds a factory (ExperimentConfig -> component) under `name`."""
  if kind not in _REGISTRIES:
    raise ValueError(f"register: kind={kind!r}; expected one of {sorted(_REGISTRIES)}.")
  _REGISTRIES[kind][name] = factory


def check_name(kind: str, name: str, where: str) -> None:
  """A ConfigError naming `where` when no factory is registered under `name`."""
  from cwm_jax.train.config import ConfigError  # pylint: disable=import-outside-toplevel
  if name not in _REGISTRIES[kind]:
    raise ConfigError(f"{where}={name!r}: expected one of {sorted(_REGISTRIES[kind])}.")


def build(kind: str, name: str, cfg):
  return _REGISTRIES[kind][name](cfg)
