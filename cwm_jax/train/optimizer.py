"""AdamW with global-norm clipping and a warmup + decay learning-rate schedule.

Defaults are this project's choice (the CWM paper does not publish them):
AdamW b1 0.9, b2 0.95, eps 1e-8, weight decay 0.1, gradient clipping at global
norm 1.0, linear warmup then cosine decay to 10% of the peak.

Weight decay is decoupled and scaled by the learning rate (optax / PyTorch
AdamW convention: p -= lr * (adam_update + wd * p)). It is *not* applied to
parameters whose path ("layers/attn_norm", "final_norm", ...) matches one of
`no_decay_patterns` (default: RMSNorm scales, whose value 1 is the identity:
decaying them towards 0 would shrink every layer's output). Embeddings and
the output head are decayed like other matrices.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimizer and learning-rate schedule.

  lr(step) rises linearly to `learning_rate` over `warmup_steps` (step 0 gets
  learning_rate / warmup_steps, never 0), then follows `schedule` down to
  `end_lr_fraction * learning_rate` at `total_steps` ("cosine", "linear") or
  stays at the peak ("constant"; `total_steps` is then not needed).
  """

  learning_rate: float = 3e-4
  schedule: str = "cosine"
  warmup_steps: int = 2000
  total_steps: Optional[int] = None
  end_lr_fraction: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  clip_norm: Optional[float] = 1.0
  no_decay_patterns: tuple[str, ...] = ("norm",)
  mu_dtype: Optional[str] = None

  def __post_init__(self):
    object.__setattr__(self, "no_decay_patterns", tuple(self.no_decay_patterns))
    self.validate()

  def validate(self) -> None:
    def bad(field, expected):
      raise ValueError(f"OptimizerConfig.{field}={getattr(self, field)!r}: expected {expected}.")

    def is_int(v):
      return isinstance(v, int) and not isinstance(v, bool)

    if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
      bad("learning_rate", "a positive number")
    if self.schedule not in SCHEDULES:
      bad("schedule", f"one of {SCHEDULES}")
    if not is_int(self.warmup_steps) or self.warmup_steps < 0:
      bad("warmup_steps", "an integer >= 0")
    if self.schedule != "constant":
      if self.total_steps is None:
        bad("total_steps", f"an integer (required by schedule={self.schedule!r})")
      if not is_int(self.total_steps) or self.total_steps <= self.warmup_steps:
        bad("total_steps", f"an integer > warmup_steps={self.warmup_steps}")
    elif self.total_steps is not None and (not is_int(self.total_steps) or self.total_steps <= 0):
      bad("total_steps", "None or a positive integer")
    if not 0.0 <= self.end_lr_fraction <= 1.0:
      bad("end_lr_fraction", "a number in [0, 1]")
    for name in ("b1", "b2"):
      if not 0.0 <= getattr(self, name) < 1.0:
        bad(name, "a number in [0, 1)")
    if not self.eps > 0:
      bad("eps", "a positive number")
    if not self.weight_decay >= 0:
      bad("weight_decay", "a number >= 0")
    if self.clip_norm is not None and not self.clip_norm > 0:
      bad("clip_norm", "None (no clipping) or a positive number")
    for pattern in self.no_decay_patterns:
      try:
        re.compile(pattern)
      except re.error as e:
        bad("no_decay_patterns", f"regular expressions ({pattern!r}: {e})")
    if self.mu_dtype is not None:
      try:
        jnp.dtype(self.mu_dtype)
      except TypeError:
        bad("mu_dtype", "None or a dtype name such as 'bfloat16'")

  def replace(self, **changes) -> "OptimizerConfig":
    return dataclasses.replace(self, **changes)


def make_schedule(cfg: OptimizerConfig):
  """The learning rate as a function of the (0-based) optimizer step."""
  peak, warmup = float(cfg.learning_rate), cfg.warmup_steps
  end = peak * cfg.end_lr_fraction
  decay_steps = max((cfg.total_steps or 0) - warmup, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * jnp.minimum(1.0, (step + 1.0) / max(warmup, 1))
    t = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    if cfg.schedule == "cosine":
      decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * t))
    elif cfg.schedule == "linear":
      decayed = peak + (end - peak) * t
    else:
      decayed = jnp.full_like(t, peak)
    return jnp.where(step < warmup, warm, decayed)

  return schedule


def decay_mask(cfg: OptimizerConfig, params):
  """True for parameters that get weight decay (path matches no pattern)."""
  patterns = [re.compile(p) for p in cfg.no_decay_patterns]

  def decays(path, _):
    name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
    return not any(p.search(name) for p in patterns)

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  """clip_by_global_norm(clip_norm) followed by AdamW on `make_schedule(cfg)`."""
  adamw = optax.adamw(
      make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
      weight_decay=cfg.weight_decay, mask=lambda params: decay_mask(cfg, params),
      mu_dtype=None if cfg.mu_dtype is None else jnp.dtype(cfg.mu_dtype))
  if cfg.clip_norm is None:
    return adamw
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
