"""Group advantages of CWM's GRPO variant (TRAINING.md).

For the G trajectories of one prompt with returns R_i and lengths n_i (agent tokens):
    mu  = sum_i n_i R_i / sum_i n_i     the length-weighted group mean
    A_i = R_i - mu                      no division by the standard deviation
`std_normalise=True` (a research switch, GRPO's original form) divides by the
group's (length-weighted) standard deviation plus `eps`. A group whose advantages
are all zero (every trajectory earned the same) carries no signal and is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cwm_jax.rl.trajectory import Trajectory


def group_advantages(rewards: Sequence[float], lengths: Sequence[int], *,
                     std_normalise: bool = False, eps: float = 1e-6) -> np.ndarray:
  """A_i of one group (float64), see the module docstring."""
  r = np.asarray(rewards, np.float64)
  n = np.asarray(lengths, np.float64)
  if r.shape != n.shape or r.ndim != 1 or not len(r):
    raise ValueError(f"group_advantages: expected equal-length 1-D rewards and lengths, got "
                     f"{r.shape} and {n.shape}.")
  if (n <= 0).any():
    raise ValueError(f"group_advantages: lengths must be positive, got {n.tolist()}.")
  mu = np.sum(n * r) / np.sum(n)
  adv = r - mu
  if std_normalise:
    std = np.sqrt(np.sum(n * adv * adv) / np.sum(n))
    adv = adv / (std + eps)
  return adv


def advantages_by_group(trajectories: Sequence[Trajectory], *, std_normalise: bool = False
                        ) -> tuple[dict[str, np.ndarray], list[str]]:
  """({group id: advantages in the group's order}, [zero-advantage group ids])."""
  groups: dict[str, list[Trajectory]] = {}
  for t in trajectories:
    groups.setdefault(t.group_id, []).append(t)
  out, zero = {}, []
  for gid, members in groups.items():
    adv = group_advantages([t.reward for t in members], [t.n_agent for t in members],
                           std_normalise=std_normalise)
    if np.all(np.abs(adv) < 1e-12):
      zero.append(gid)
    out[gid] = adv
  return out, zero
