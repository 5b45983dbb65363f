"""`ExperimentConfig`: an experiment's ml_collections config, validated once.

Config files (`experiments/configs/<stage>.py`) return a `ConfigDict`; the entry
point turns it into these frozen dataclasses with `experiment_config(cd)`, so an
unknown key, a wrong type or a bad value is reported once, naming the key
(`config.train.steps`), and nothing below the entry point sees a ConfigDict.

ConfigDict layout (every section optional except `model`, `data`, `train`):

    name, stage, seed, init_from, init_optimizer_state
    model:     preset + any `ModelConfig` field as an override
    optimizer: `OptimizerConfig` fields
    data:      tokenizer_path, seq_len, batch_size, sources, eval_sources, ...
    train:     `TrainConfig` fields (steps, checkpointing, logging, NaN policy)
    mesh:      `MeshConfig` fields
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import types
import typing
from typing import Any, Mapping, Optional, Union

from cwm_jax.model.config import ModelConfig, get_preset
from cwm_jax.sharding.mesh import MeshConfig
from cwm_jax.train.optimizer import OptimizerConfig

STAGES = ("pretrain", "midtrain", "sft", "rl")

NAN_POLICIES = ("skip", "stop")


class ConfigError(ValueError):
  """A user mistake in an experiment config; the message names the key."""


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One data source of a mixture (see data_pipelines.pipeline.SourceConfig)."""
  name: str
  paths: tuple[str, ...]
  kind: str = "text"
  weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Training (and held-out) data: a weighted mixture, packed into [batch, seq_len] rows."""
  tokenizer_path: str
  seq_len: int
  batch_size: int
  sources: tuple[SourceSpec, ...]
  eval_sources: tuple[SourceSpec, ...] = ()
  train_on_context: bool = False
  overflow: str = "split"
  pack_open_rows: int = 8
  num_workers: int = 0
  producer: str = "grain"        # what yields batches (cwm_jax.train.components)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The loop: how long, how often to log / evaluate / checkpoint, what to do on NaN.

  `steps` counts the optimizer steps of *this* run; a run initialised with
  `init_optimizer_state` continues the step counter (and the learning-rate
  schedule) of the run it starts from.
  """
  steps: int
  accum_steps: int = 1
  objective: str = "cross_entropy"  # what the step minimises (cwm_jax.train.components)
  # The summed loss is divided by the batch's total loss weight ("weight") or by a
  # constant (CWM's RL: 131072), exactly whatever accum_steps is.
  loss_normaliser: Union[str, float] = "weight"
  z_loss: float = 0.0
  loss_chunk: int = 1024
  log_every: int = 10
  eval_every: int = 0            # 0: evaluate only at the end
  eval_batches: int = 4
  eval_hooks: tuple[str, ...] = ()  # extra evaluations, e.g. ("trace_metrics",)
  trace_eval_programs: int = 16     # trace_metrics: held-out traces, frames each, budget
  trace_eval_frames: int = 2
  trace_eval_max_new_tokens: int = 256
  checkpoint_every: int = 100
  keep_last: int = 3
  keep_every: Optional[int] = None
  async_checkpoint: bool = True
  # A step whose loss or gradient norm is NaN/inf never updates the state. "skip"
  # drops it and goes on (stopping after `max_nonfinite_steps` in a row), "stop"
  # ends the run with an error; either way no NaN reaches a checkpoint.
  nan_policy: str = "skip"
  max_nonfinite_steps: int = 10
  profile_start: int = -1        # >= 0: jax.profiler trace of `profile_steps` steps
  profile_steps: int = 5


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  name: str
  stage: str
  seed: int
  model: ModelConfig
  optimizer: OptimizerConfig
  data: DataConfig
  train: TrainConfig
  mesh: MeshConfig
  # A training workdir / checkpoint step dir / `save_orbax` dir, or an HF
  # safetensors dir: the initial parameters of a fresh run (not of a resume).
  init_from: str = ""
  # With init_from a training checkpoint: also take its optimizer state and
  # step, so the learning-rate schedule continues (midtraining, as in the paper).
  init_optimizer_state: bool = False
  # The RL stage's section (`cwm_jax.rl.config.RLConfig`); None for other stages.
  rl: Any = None

  def identity(self) -> dict:
    """What a workdir's checkpoints must match to be resumed by this config."""
    # Fields that leave the weights valid (RoPE scaling, lengths, remat, backend,
    # dtypes) may change between stages and between a run and its resume.
    from cwm_jax.train.checkpoint import WEIGHT_NEUTRAL  # pylint: disable=import-outside-toplevel
    model = self.model.to_dict()
    return {"name": self.name, "stage": self.stage,
            "model": {k: v for k, v in model.items() if k not in WEIGHT_NEUTRAL}}

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out["model"] = self.model.to_dict()
    return out

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)


def _plain(value: Any) -> Any:
  """ConfigDict / tuples -> plain dicts, lists and scalars."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _type_name(tp) -> str:
  return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp, where: str) -> Any:
  """`value` checked against the annotation `tp` (int, float, bool, str, Optional, tuple)."""
  origin = typing.get_origin(tp)
  if origin in (Union, types.UnionType):
    args = typing.get_args(tp)
    if value is None and type(None) in args:
      return None
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _coerce(value, arg, where)
      except ConfigError:
        pass
    raise ConfigError(f"{where}={value!r}: expected {' or '.join(_type_name(a) for a in args)}.")
  if origin is tuple:
    (item, *_) = typing.get_args(tp)
    if isinstance(value, str):
      value = [value]
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"{where}={value!r}: expected a list.")
    return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
  if tp is bool:
    if not isinstance(value, bool):
      raise ConfigError(f"{where}={value!r}: expected true or false.")
    return value
  if tp is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise ConfigError(f"{where}={value!r}: expected an integer.")
    return value
  if tp is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"{where}={value!r}: expected a number.")
    return float(value)
  if tp is str:
    if not isinstance(value, str):
      raise ConfigError(f"{where}={value!r}: expected a string.")
    return value
  if dataclasses.is_dataclass(tp):
    return _dataclass(tp, value, where)
  return value


def _dataclass(cls, d: Any, where: str, skip: tuple[str, ...] = ()):
  """`cls(**d)` with unknown keys, missing keys and types reported against `where`."""
  if not isinstance(d, Mapping):
    raise ConfigError(f"{where}: expected a section (dict), got {d!r}.")
  hints = typing.get_type_hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
  unknown = sorted(set(d) - set(fields))
  if unknown:
    raise ConfigError(f"{where}: unknown key(s) {unknown}; expected a subset of {sorted(fields)}.")
  missing = [n for n, f in fields.items() if n not in d and f.default is dataclasses.MISSING
             and f.default_factory is dataclasses.MISSING]
  if missing:
    raise ConfigError(f"{where}: missing required key(s) {missing}.")
  kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in d.items()}
  try:
    return cls(**kwargs)
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    raise ConfigError(f"{where}: {e}") from None


def _model(d: Any) -> ModelConfig:
  if not isinstance(d, Mapping) or "preset" not in d:
    raise ConfigError("config.model: expected a section with `preset` (tiny, cwm_150m, cwm_1b, "
                      "cwm_8b, cwm_32b) and optional ModelConfig field overrides.")
  overrides = {k: v for k, v in d.items() if k != "preset"}
  if overrides.get("layer_types", ()) is None:
    del overrides["layer_types"]  # CWM's 3:1 pattern for n_layers
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise ConfigError(f"config.model: unknown key(s) {unknown}; expected `preset` and ModelConfig "
                      f"fields {sorted(known)}.")
  if overrides.get("rope_scaling") is not None and not isinstance(overrides["rope_scaling"], Mapping):
    raise ConfigError(f"config.model.rope_scaling={overrides['rope_scaling']!r}: expected None or a "
                      "section (factor, low_freq_factor, high_freq_factor, original_max_positions).")
  hints = typing.get_type_hints(ModelConfig)
  for k, v in overrides.items():
    if k not in ("rope_scaling", "layer_types"):
      overrides[k] = _coerce(v, hints[k], f"config.model.{k}")
  try:
    return get_preset(d["preset"], **overrides)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.model: {e}") from None


def experiment_config(config: Any) -> ExperimentConfig:
  """Validates a ConfigDict (or plain dict) into an `ExperimentConfig`."""
  d = _plain(config)
  if not isinstance(d, Mapping):
    raise ConfigError(f"config: expected a ConfigDict, got {type(config).__name__}.")
  for section in ("model", "data", "train"):
    if section not in d:
      raise ConfigError(f"config: missing section `{section}`.")
  top = {f.name for f in dataclasses.fields(ExperimentConfig)}
  unknown = sorted(set(d) - top)
  if unknown:
    raise ConfigError(f"config: unknown key(s) {unknown}; expected a subset of {sorted(top)}.")
  stage = d.get("stage")
  if stage not in STAGES:
    raise ConfigError(f"config.stage={stage!r}: expected one of {STAGES}.")
  data = _dataclass(DataConfig, d["data"], "config.data")
  if not data.sources and data.producer == "grain":
    raise ConfigError("config.data.sources is empty: give at least one source.")
  if (stage == "rl") != ("rl" in d):
    raise ConfigError("config.rl: an RL stage needs an `rl` section, and only an RL stage has one "
                      f"(stage={stage!r}).")
  train = _check_train(_dataclass(TrainConfig, d["train"], "config.train"))
  cfg = ExperimentConfig(
      name=_coerce(d.get("name", stage), str, "config.name"),
      stage=stage,
      seed=_coerce(d.get("seed", 0), int, "config.seed"),
      model=_model(d["model"]),
      optimizer=_dataclass(OptimizerConfig, d.get("optimizer", {}), "config.optimizer"),
      data=data, train=train,
      mesh=_dataclass(MeshConfig, d.get("mesh", {}), "config.mesh"),
      init_from=_coerce(d.get("init_from", ""), str, "config.init_from"),
      init_optimizer_state=_coerce(d.get("init_optimizer_state", False), bool,
                                   "config.init_optimizer_state"),
      rl=_rl_section(d.get("rl"), stage))
  if cfg.data.seq_len > cfg.model.max_seq_len:
    raise ConfigError(f"config.data.seq_len={cfg.data.seq_len} exceeds config.model.max_seq_len="
                      f"{cfg.model.max_seq_len}.")
  if cfg.init_optimizer_state and not cfg.init_from:
    raise ConfigError("config.init_optimizer_state=True needs config.init_from (a training checkpoint).")
  if cfg.init_from and not os.path.exists(cfg.init_from):
    raise ConfigError(f"config.init_from={cfg.init_from!r} does not exist.")
  from cwm_jax.train import components  # pylint: disable=import-outside-toplevel
  components.check_name("objective", cfg.train.objective, "config.train.objective")
  components.check_name("producer", cfg.data.producer, "config.data.producer")
  for i, hook in enumerate(cfg.train.eval_hooks):
    components.check_name("eval_hook", hook, f"config.train.eval_hooks[{i}]")
  if cfg.data.producer == "grain":
    pipeline_config(cfg)  # the data pipeline's own checks (paths, kinds, tokenizer)
  elif cfg.data.tokenizer_path and not os.path.exists(cfg.data.tokenizer_path):
    raise ConfigError(f"config.data.tokenizer_path={cfg.data.tokenizer_path!r} does not exist.")
  if cfg.data.eval_sources:
    pipeline_config(cfg, eval_split=True)
  if cfg.rl is not None:
    from cwm_jax.rl.config import check_rl  # pylint: disable=import-outside-toplevel
    try:
      check_rl(cfg.rl, cfg.data.seq_len, cfg.train.loss_normaliser, cfg.model.vocab_size)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  return cfg


def _rl_section(d: Any, stage: str):
  if stage != "rl":
    return None
  from cwm_jax.rl.config import RLConfig  # pylint: disable=import-outside-toplevel
  return _dataclass(RLConfig, d, "config.rl")


def _check_train(t: TrainConfig) -> TrainConfig:
  def bad(field, expected):
    raise ConfigError(f"config.train.{field}={getattr(t, field)!r}: expected {expected}.")
  from cwm_jax.train.objectives import WEIGHT, check_normaliser  # pylint: disable=import-outside-toplevel
  normaliser = t.loss_normaliser
  if isinstance(normaliser, str) and normaliser != WEIGHT:
    try:  # a number given on the command line arrives as text
      normaliser = float(normaliser)
    except ValueError:
      pass
  try:
    t = dataclasses.replace(t, loss_normaliser=check_normaliser(normaliser))
  except ValueError:
    bad("loss_normaliser", f"{WEIGHT!r} (the batch's total loss weight) or a positive number")
  for field in ("steps", "accum_steps", "loss_chunk", "log_every", "eval_batches",
                "checkpoint_every", "keep_last", "max_nonfinite_steps", "profile_steps"):
    if getattr(t, field) < 1:
      bad(field, "an integer >= 1")
  if t.eval_every < 0:
    bad("eval_every", "an integer >= 0 (0: only at the end)")
  if t.keep_every is not None and t.keep_every < 1:
    bad("keep_every", "None or an integer >= 1")
  if t.nan_policy not in NAN_POLICIES:
    bad("nan_policy", f"one of {NAN_POLICIES}")
  if t.z_loss < 0:
    bad("z_loss", "a number >= 0")
  for field in ("trace_eval_programs", "trace_eval_frames", "trace_eval_max_new_tokens"):
    if getattr(t, field) < 1:
      bad(field, "an integer >= 1")
  return t


def pipeline_config(cfg: ExperimentConfig, *, eval_split: bool = False):
  """The grain `PipelineConfig` of the training (or held-out) data."""
  from data_pipelines.pipeline import PipelineConfig, SourceConfig  # data side, imported late
  specs = cfg.data.eval_sources if eval_split else cfg.data.sources
  where = "config.data.eval_sources" if eval_split else "config.data.sources"
  try:
    sources = tuple(SourceConfig(s.name, s.paths, s.kind, s.weight) for s in specs)
    for s in sources:
      for p in s.paths:
        if not glob.glob(p):
          raise ValueError(f"source {s.name!r}: no file matches {p!r}")
    return PipelineConfig(
        sources=sources, tokenizer_path=cfg.data.tokenizer_path, seq_len=cfg.data.seq_len,
        batch_size=cfg.data.batch_size, seed=cfg.seed, train_on_context=cfg.data.train_on_context,
        overflow=cfg.data.overflow, pack_open_rows=cfg.data.pack_open_rows,
        num_workers=0 if eval_split else cfg.data.num_workers, shuffle=not eval_split)
  except ValueError as e:
    raise ConfigError(f"{where}: {e}") from None
