"""`Trajectory`: one episode as the learner sees it, token by token.

    tokens      int32 [n]    everything the model saw or wrote, in order, never
                             re-tokenised: prompt, then agent and environment turns
    sources     int8  [n]    PROMPT / AGENT / ENV per token (the loss covers AGENT only)
    logprobs    float32 [n]  behaviour log-prob of each AGENT token: the distribution it
                             was drawn from (after temperature, top-k, top-p); 0 elsewhere
    versions    int32 [n]    learner step of the weights that drew each AGENT token; -1
                             elsewhere
    reward      float        the episode's return (terminal, on the last action)
    task_id, env_id, group_id   which task, environment and sampling group (the G
                             samples of one prompt share a group)

`finish` says why the episode ended ("done", "length", "timeout", "error"); `outcome`
is the environment's record of what happened (tests passed, answer, ...);
`advantage` is set from its group before it is packed for the learner.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

PROMPT, AGENT, ENV = 0, 1, 2
SOURCE_NAMES = {PROMPT: "prompt", AGENT: "agent", ENV: "env"}


@dataclasses.dataclass(eq=False)  # arrays: compared by identity
class Trajectory:
  tokens: np.ndarray
  sources: np.ndarray
  logprobs: np.ndarray
  versions: np.ndarray
  reward: float
  task_id: str
  env_id: str
  group_id: str
  finish: str = "done"
  outcome: dict = dataclasses.field(default_factory=dict)
  info: dict = dataclasses.field(default_factory=dict)
  advantage: float | None = None   # set from its group (advantages.py) before packing

  def __post_init__(self):
    self.tokens = np.asarray(self.tokens, np.int32)
    self.sources = np.asarray(self.sources, np.int8)
    self.logprobs = np.asarray(self.logprobs, np.float32)
    self.versions = np.asarray(self.versions, np.int32)
    n = len(self.tokens)
    for name in ("sources", "logprobs", "versions"):
      if getattr(self, name).shape != (n,):
        raise ValueError(f"Trajectory {self.task_id!r}: {name} has shape "
                         f"{getattr(self, name).shape}, expected ({n},) like tokens.")
    if not np.isin(self.sources, (PROMPT, AGENT, ENV)).all():
      raise ValueError(f"Trajectory {self.task_id!r}: sources must be PROMPT (0), AGENT (1) or "
                       "ENV (2).")
    if not self.agent_mask.any():
      raise ValueError(f"Trajectory {self.task_id!r}: no agent token; nothing to learn from.")
    if (self.versions[self.agent_mask] < 0).any():
      raise ValueError(f"Trajectory {self.task_id!r}: an agent token has no weight version.")

  def __len__(self) -> int:
    return len(self.tokens)

  @property
  def agent_mask(self) -> np.ndarray:
    return self.sources == AGENT

  @property
  def n_agent(self) -> int:
    return int(self.agent_mask.sum())

  @property
  def oldest_version(self) -> int:
    """The learner step of the oldest weights that wrote any of its tokens."""
    return int(self.versions[self.agent_mask].min())

  @property
  def newest_version(self) -> int:
    return int(self.versions[self.agent_mask].max())

  def to_json(self) -> dict[str, Any]:
    """A JSON-friendly record (for logging samples)."""
    return {"task_id": self.task_id, "env_id": self.env_id, "group_id": self.group_id,
            "reward": self.reward, "finish": self.finish, "outcome": self.outcome,
            "tokens": self.tokens.tolist(), "sources": self.sources.tolist(),
            "logprobs": self.logprobs.tolist(), "versions": self.versions.tolist(),
            "info": self.info, "advantage": self.advantage}
