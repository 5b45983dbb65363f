"""`ModelConfig`: the one frozen description of a CWM decoder, and its presets.

The model never sees an ml_collections ConfigDict: configs are validated into
this dataclass at the boundary (experiments, converter) and passed around as is.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from cwm_jax.model.attention import IMPLS as ATTENTION_IMPLS

GLOBAL = "global"
LOCAL = "local"
LAYER_TYPES = (GLOBAL, LOCAL)
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
REMAT_SCOPES = ("layer", "group")
DTYPES = ("float32", "bfloat16", "float16")
CONTEXT_LOAD_BALANCE = ("none", "zigzag")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style frequency scaling (switched on from mid-training)."""

  factor: float = 16.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_positions: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape, numerics and execution switches of a CWM decoder.

  `layer_types` is explicit (one entry per layer, "global" or "local"), never
  derived from a rule inside the model. `window` counts keys *including* the
  query: key j is visible from query i iff i - window < j <= i.
  """

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  mlp_dim: int
  layer_types: tuple[str, ...]
  window: int = 8192
  rope_theta: float = 1e6
  rope_scaling: Optional[RopeScaling] = None
  rms_norm_eps: float = 1e-5
  max_seq_len: int = 131072
  init_std: float = 0.02
  param_dtype: str = "float32"
  dtype: str = "float32"
  scan_layers: bool = True
  scan_period: int = 4
  remat: str = "none"
  # "layer": checkpoint each layer (saves every layer's input, recomputes one
  # layer at a time); "group": checkpoint each scanned group of `scan_period`
  # layers (saves 1/scan_period of the inputs, recomputes a whole group).
  remat_scope: str = "layer"
  attention_impl: str = "auto"
  attention_chunk: int = 512
  # With the sequence split over the `context` mesh axis: "zigzag" gives shard c
  # chunks c and 2C-1-c of the sequence, so every shard does the same causal work
  # (the objectives permute tokens, targets, positions and segment ids to match);
  # "none" keeps contiguous shards (the last does C times the first's work).
  context_load_balance: str = "none"

  def __post_init__(self):
    # Lists from JSON/ConfigDicts become tuples so the config stays hashable.
    object.__setattr__(self, "layer_types", tuple(self.layer_types))
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
    self.validate()

  def validate(self) -> None:
    def bad(field, value, expected):
      raise ValueError(f"ModelConfig.{field}={value!r}: expected {expected}.")

    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                 "head_dim", "mlp_dim", "window", "max_seq_len", "scan_period",
                 "attention_chunk"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        bad(name, value, "a positive integer")
    if self.n_heads % self.n_kv_heads:
      bad("n_kv_heads", self.n_kv_heads,
          f"a divisor of n_heads={self.n_heads} (grouped-query attention)")
    if self.head_dim % 2:
      bad("head_dim", self.head_dim, "an even number (RoPE rotates pairs)")
    if len(self.layer_types) != self.n_layers:
      bad("layer_types", self.layer_types,
          f"one entry per layer (n_layers={self.n_layers}), got {len(self.layer_types)}")
    for t in self.layer_types:
      if t not in LAYER_TYPES:
        bad("layer_types", t, f"each entry one of {LAYER_TYPES}")
    if self.rope_theta <= 0:
      bad("rope_theta", self.rope_theta, "a positive float")
    if self.rms_norm_eps <= 0:
      bad("rms_norm_eps", self.rms_norm_eps, "a positive float")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in DTYPES:
        bad(name, getattr(self, name), f"one of {DTYPES}")
    if self.remat not in REMAT_POLICIES:
      bad("remat", self.remat, f"one of {REMAT_POLICIES}")
    if self.remat_scope not in REMAT_SCOPES:
      bad("remat_scope", self.remat_scope, f"one of {REMAT_SCOPES}")
    if self.attention_impl not in ATTENTION_IMPLS:
      bad("attention_impl", self.attention_impl, f"one of {ATTENTION_IMPLS}")
    if self.context_load_balance not in CONTEXT_LOAD_BALANCE:
      bad("context_load_balance", self.context_load_balance, f"one of {CONTEXT_LOAD_BALANCE}")
    if self.scan_layers:
      p = self.scan_period
      for i in range(self.n_layers // p * p):
        if self.layer_types[i] != self.layer_types[i % p]:
          bad("layer_types", self.layer_types,
              f"a pattern periodic with scan_period={p} when scan_layers=True (layer {i} "
              f"differs from layer {i % p}); set scan_layers=False or a matching scan_period")
    if self.rope_scaling is not None:
      s = self.rope_scaling
      if s.factor <= 0 or s.original_max_positions <= 0:
        bad("rope_scaling", s, "a positive factor and original_max_positions")
      if s.high_freq_factor <= s.low_freq_factor:
        bad("rope_scaling", s, "high_freq_factor > low_freq_factor")

  @property
  def n_groups(self) -> int:
    """Query heads per KV head."""
    return self.n_heads // self.n_kv_heads

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["layer_types"] = list(self.layer_types)
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"ModelConfig: unknown field(s) {unknown}; expected a subset of {sorted(known)}.")
    return cls(**d)


def cwm_layer_types(n_layers: int, period: int = 4) -> tuple[str, ...]:
  """CWM's pattern: layer i is global iff i % period == 0 (3 local : 1 global)."""
  return tuple(GLOBAL if i % period == 0 else LOCAL for i in range(n_layers))


def _preset(**kw) -> ModelConfig:
  kw.setdefault("layer_types", cwm_layer_types(kw["n_layers"]))
  return ModelConfig(**kw)


# `tiny`, `cwm_150m`, `cwm_1b` and `cwm_8b` are this project's choices (the paper
# publishes only the 32B shape); they keep CWM's 3:1 local/global pattern.
PRESETS = {
    # CPU tests and the quickstart: ~0.3M params with a 1k vocab.
    "tiny": lambda: _preset(
        vocab_size=1024, d_model=64, n_layers=4, n_heads=4, n_kv_heads=2,
        head_dim=16, mlp_dim=176, window=16, max_seq_len=4096,
        attention_chunk=64),
    # Research scale; vocab sized for a project-trained sentencepiece tokenizer
    # (set vocab_size=128256 to pair it with the CWM tokenizer).
    "cwm_150m": lambda: _preset(
        vocab_size=32768, d_model=768, n_layers=16, n_heads=12, n_kv_heads=4,
        head_dim=64, mlp_dim=2560, window=2048, max_seq_len=32768),
    # Llama-3.2-1B shape (untied head), CWM tokenizer vocab.
    "cwm_1b": lambda: _preset(
        vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
        head_dim=64, mlp_dim=8192, window=8192, dtype="bfloat16"),
    # Llama-3-8B shape with CWM's 3:1 pattern; the paper's ablation scale.
    "cwm_8b": lambda: _preset(
        vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
        head_dim=128, mlp_dim=14336, window=8192, dtype="bfloat16"),
    # The released model, exact (32,581,097,472 parameters).
    "cwm_32b": lambda: _preset(
        vocab_size=128256, d_model=6144, n_layers=64, n_heads=48, n_kv_heads=8,
        head_dim=128, mlp_dim=21504, window=8192, dtype="bfloat16",
        rope_scaling=RopeScaling()),
}


def get_preset(name: str, **overrides) -> ModelConfig:
  """Returns preset `name` with field overrides applied.

  Overriding `n_layers` without `layer_types` keeps CWM's 3:1 pattern.
  """
  if name not in PRESETS:
    raise ValueError(f"Unknown model preset {name!r}; expected one of {sorted(PRESETS)}.")
  if "n_layers" in overrides and "layer_types" not in overrides:
    overrides["layer_types"] = cwm_layer_types(overrides["n_layers"])
  return PRESETS[name]().replace(**overrides)
