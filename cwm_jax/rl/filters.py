"""Which trajectories reach the learner (TRAINING.md), each drop counted by name.

  stale          its oldest agent token was drawn by weights more than `max_staleness`
                 learner steps behind the current step (CWM: 100)
  gibberish      it holds an agent token with id > `gibberish_min_id` sampled with a
                 log-prob < -ln(vocab) - `gibberish_margin` (CWM: 100,000 and 2)
  zero_advantage its group's advantages are all zero (applied per group, see
                 `advantages.advantages_by_group`)
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence

from cwm_jax.rl.trajectory import Trajectory


@dataclasses.dataclass(frozen=True)
class FilterConfig:
  max_staleness: int = 100
  gibberish_min_id: int = 100_000
  gibberish_margin: float = 2.0


def is_stale(t: Trajectory, learner_step: int, max_staleness: int) -> bool:
  return learner_step - t.oldest_version > max_staleness


def is_gibberish(t: Trajectory, vocab_size: int, min_id: int, margin: float) -> bool:
  threshold = -math.log(vocab_size) - margin
  agent = t.agent_mask
  return bool(((t.tokens > min_id) & (t.logprobs < threshold) & agent).any())


def filter_trajectories(trajectories: Sequence[Trajectory], learner_step: int, vocab_size: int,
                        config: FilterConfig = FilterConfig()
                        ) -> tuple[list[Trajectory], Counter]:
  """(kept, Counter of drop reasons)."""
  kept, dropped = [], Counter()
  for t in trajectories:
    if is_stale(t, learner_step, config.max_staleness):
      dropped["stale"] += 1
    elif is_gibberish(t, vocab_size, config.gibberish_min_id, config.gibberish_margin):
      dropped["gibberish"] += 1
    else:
      kept.append(t)
  return kept, dropped
