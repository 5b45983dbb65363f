"""Toy environments a tiny model learns from scratch on a CPU in minutes.

They speak token ids directly (no text): digits are ids `DIGIT0 .. DIGIT0 + 9` of a
small vocabulary, and the agent's turn is its first `turn_tokens` tokens (the
engine ends a turn at `max_turn_tokens` or a stop token).

  toy_copy   single turn: the prompt shows a digit d; the answer is right when the
             agent's first token is digit f(d) (f = identity, or +1 mod 10 with
             `shift=1`). Reward +1 / -1.
  toy_chain  multi-turn: each of `turns` turns shows a digit (the first in the prompt,
             the others as environment observations, which are not trained on); each
             answer is judged like toy_copy. The outcome counts right answers; the
             reward is 2 * right / turns - 1 (partial credit: a sparse +1 only for
             all-right would make the signal too rare for a model starting from
             random weights).

Tasks are generated from an index: `task(k)` is deterministic, and ids repeat
(`toy_copy:3`), so the solve-rate filter sees repeated tasks.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from cwm_jax.rl.envs.base import StepResult, Task, plus_minus_one

BOS, EOS, SEP = 1, 2, 3
DIGIT0 = 4


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  shift: int = 0        # answer = (d + shift) % 10
  turns: int = 2        # toy_chain only
  seed: int = 0


def _digit_token(d: int) -> int:
  return DIGIT0 + d


def _judge(action: Sequence[int], digit: int, shift: int) -> bool:
  return len(action) > 0 and int(action[0]) == _digit_token((digit + shift) % 10)


class _CopyEpisode:
  def __init__(self, digit: int, shift: int):
    self.digit, self.shift = digit, shift
    self.prompt = [BOS, _digit_token(digit), SEP]

  def step(self, action: Sequence[int]) -> StepResult:
    right = _judge(action, self.digit, self.shift)
    return StepResult((), True, {"success": right, "right": int(right), "turns": 1})


class ToyCopyEnv:
  """Single turn; see the module docstring."""
  name = "toy_copy"
  reward_fn = staticmethod(plus_minus_one)
  stop_token_ids = (EOS,)

  def __init__(self, config: ToyConfig = ToyConfig()):
    self.config = config

  def task(self, k: int) -> Task:
    d = random.Random(f"{self.config.seed}:{self.name}:{k}").randrange(10)
    return Task(f"{self.name}:{d}", self.name, {"digit": d})

  def start(self, task: Task) -> _CopyEpisode:
    return _CopyEpisode(int(task.data["digit"]), self.config.shift)


class _ChainEpisode:
  def __init__(self, digits: Sequence[int], shift: int):
    self.digits, self.shift, self.turn, self.right = list(digits), shift, 0, 0
    self.prompt = [BOS, _digit_token(self.digits[0]), SEP]

  def step(self, action: Sequence[int]) -> StepResult:
    self.right += _judge(action, self.digits[self.turn], self.shift)
    self.turn += 1
    if self.turn == len(self.digits):
      return StepResult((), True, {"success": self.right == len(self.digits),
                                   "right": self.right, "turns": len(self.digits)})
    return StepResult([SEP, _digit_token(self.digits[self.turn]), SEP], False, {})


def partial_credit(outcome: dict) -> float:
  """2 * right / turns - 1; a truncated episode (no `turns`) is -1."""
  if "turns" not in outcome:
    return -1.0
  return 2.0 * outcome["right"] / outcome["turns"] - 1.0


class ToyChainEnv:
  """Multi-turn; see the module docstring."""
  name = "toy_chain"
  reward_fn = staticmethod(partial_credit)
  stop_token_ids = (EOS,)

  def __init__(self, config: ToyConfig = ToyConfig()):
    self.config = config

  def task(self, k: int) -> Task:
    rng = random.Random(f"{self.config.seed}:{self.name}:{k}")
    digits = [rng.randrange(10) for _ in range(self.config.turns)]
    return Task(f"{self.name}:{''.join(map(str, digits))}", self.name, {"digits": digits})

  def start(self, task: Task) -> _ChainEpisode:
    return _ChainEpisode([int(d) for d in task.data["digits"]], self.config.shift)
