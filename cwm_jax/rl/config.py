"""`RLConfig`: the `rl` section of an RL stage config (`experiments/configs/rl.py`).

Defaults are CWM's where TRAINING.md gives them (asymmetric clipping 0.2 / 0.25, a
constant normaliser, no KL, no std-normalised advantages, staleness 100, the
gibberish filter); the rest (group size, sampling, slots, lags) are documented
choices of this project. The learner's rows are `config.data.batch_size` x
`config.data.seq_len` (the token budget of one step); `config.train.loss_normaliser`
is the constant N for `normaliser="constant"` (CWM: 131,072).
"""

from __future__ import annotations

import dataclasses
import os

ENV_KINDS = ("toy_copy", "toy_chain", "code", "math", "math_tool")
MODES = ("sync", "async")


@dataclasses.dataclass(frozen=True)
class EnvSpec:
  """One environment of the task mixture."""
  name: str
  kind: str
  weight: float = 1.0
  tasks: str = ""            # code / math: a JSONL task file
  turns: int = 2             # toy_chain: turns per episode
  shift: int = 0             # toy: the answer is (digit + shift) % 10
  max_attempts: int = 1      # code: attempts, failing tests fed back between them


@dataclasses.dataclass(frozen=True)
class RLConfig:
  envs: tuple[EnvSpec, ...]
  group_size: int = 8              # G samples per prompt
  groups_per_step: int = 8         # groups generated for each learner step
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  max_episode_tokens: int = 0      # 0: config.data.seq_len (an episode fits one learner row)
  max_turn_tokens: int = 256
  engine_slots: int = 16
  env_workers: int = 4
  env_timeout_s: float = 60.0
  recompute_on_swap: bool = True
  clip_low: float = 0.2
  clip_high: float = 0.25
  normaliser: str = "constant"     # constant (N = train.loss_normaliser) | token_mean | sequence_mean
  std_advantages: bool = False
  kl_coef: float = 0.0             # > 0: k3 KL to the initial (frozen) policy
  sequence_ratio: bool = False     # GSPO
  tis_cap: float = 0.0             # > 0: truncated importance weights instead of clipping
  max_staleness: int = 100
  gibberish_min_id: int = 100_000
  gibberish_margin: float = 2.0
  solve_rate_lo: float = 0.0       # CWM: 0.1 (off by default for models trained from scratch)
  solve_rate_hi: float = 1.0       # CWM: 0.7
  solve_rate_window: int = 16
  solve_rate_min_samples: int = 4
  mode: str = "sync"               # sync: generate, then learn, on the same devices
  engine_devices: int = 0          # async: devices of the engine's sub-mesh (-1: a quarter);
                                   # the rest learn. sync: 0 = all of them
  max_lag: int = 1                 # async: learner steps the engine may run ahead
  sample_every: int = 0            # > 0: write a few decoded episodes every N steps


def check_rl(rl: RLConfig, seq_len: int, loss_normaliser, vocab_size: int) -> RLConfig:
  """Cross-field checks; raises ValueError naming `config.rl.<field>`."""
  def bad(field, expected):
    raise ValueError(f"config.rl.{field}={getattr(rl, field)!r}: expected {expected}.")
  if not rl.envs:
    raise ValueError("config.rl.envs is empty: give at least one environment.")
  names = [e.name for e in rl.envs]
  if len(set(names)) != len(names):
    raise ValueError(f"config.rl.envs: names must be unique, got {names}.")
  for i, e in enumerate(rl.envs):
    if e.kind not in ENV_KINDS:
      raise ValueError(f"config.rl.envs[{i}].kind={e.kind!r}: expected one of {ENV_KINDS}.")
    if not e.weight > 0:
      raise ValueError(f"config.rl.envs[{i}].weight={e.weight!r}: expected a number > 0.")
    if e.kind in ("code", "math", "math_tool") and not e.tasks:
      raise ValueError(f"config.rl.envs[{i}].tasks is empty: environment {e.name!r} ({e.kind}) "
                       "needs a JSONL task file.")
    if e.tasks and not os.path.exists(e.tasks):
      raise ValueError(f"config.rl.envs[{i}].tasks={e.tasks!r} does not exist.")
  for field in ("group_size", "groups_per_step", "max_turn_tokens", "engine_slots",
                "env_workers", "solve_rate_window", "solve_rate_min_samples"):
    if getattr(rl, field) < 1:
      bad(field, "an integer >= 1")
  if rl.group_size < 2:
    bad("group_size", "an integer >= 2 (advantages compare samples of one prompt)")
  if rl.max_episode_tokens < 0 or rl.max_episode_tokens > seq_len:
    bad("max_episode_tokens", f"0 (= data.seq_len) or an integer <= data.seq_len={seq_len} "
        "(an episode must fit one learner row)")
  if rl.mode not in MODES:
    bad("mode", f"one of {MODES}")
  if rl.mode == "async" and rl.engine_devices == 0:
    bad("engine_devices", "an integer >= 1 (or -1: a quarter) in async mode, the engine's share "
        "of the devices")
  if rl.max_lag < 0:
    bad("max_lag", "an integer >= 0")
  if rl.normaliser == "constant" and isinstance(loss_normaliser, str):
    raise ValueError("config.rl.normaliser='constant' needs config.train.loss_normaliser to be "
                     "the constant N (e.g. 131072), not 'weight'.")
  if rl.normaliser != "constant" and loss_normaliser != "weight":
    raise ValueError(f"config.rl.normaliser={rl.normaliser!r} divides by the batch's own weight: "
                     "set config.train.loss_normaliser='weight'.")
  if not 0 < rl.top_p <= 1:
    bad("top_p", "a number in (0, 1]")
  if rl.temperature <= 0:
    bad("temperature", "a number > 0 (RL samples; greedy has no behaviour distribution)")
  if not rl.solve_rate_lo <= rl.solve_rate_hi:
    bad("solve_rate_lo", f"<= solve_rate_hi={rl.solve_rate_hi}")
  del vocab_size  # a vocabulary smaller than gibberish_min_id never triggers the filter
  return rl
