"""The environment API: token in, token out; outcomes, not rewards.

    env = registry.make(spec, tokenizer)         # an `Environment`
    episode = env.start(task)                     # episode.prompt: list of token ids
    result = episode.step(action_ids)             # the agent's turn, ending with its stop token
    result.observation, result.done, result.outcome

An episode sees exactly the token ids the model produced and answers with token ids
the model will read next (an observation of a multi-turn episode, e.g. a tool
result and the next turn's header); text is decoded only to act on it, and what the
model saw is never re-tokenised. The prompt and observations are not trained on.

When `done`, `outcome` records what happened (format ok, tests passed, answer...);
a `RewardFn` maps it to the episode's return. Rewards are separate so that one
environment serves several reward definitions (CWM: +1 / -1; SWE: +1 / 0 / -1).

`step` may be slow (sandboxed execution): the rollout engine runs it on a thread
pool so decoding never waits for it, with a wall-clock timeout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cwm_jax.tokenizer import special_tokens
from cwm_jax.tokenizer.formats import encode_dialog


@dataclasses.dataclass(frozen=True)
class Task:
  """One task: `id` (unique), the environment `env` it belongs to, its record `data`."""
  id: str
  env: str
  data: dict


@dataclasses.dataclass(frozen=True)
class StepResult:
  observation: Sequence[int] = ()
  done: bool = False
  outcome: dict = dataclasses.field(default_factory=dict)


class Episode(Protocol):
  prompt: Sequence[int]

  def step(self, action: Sequence[int]) -> StepResult: ...


class Environment(Protocol):
  name: str

  def start(self, task: Task) -> Episode: ...


RewardFn = Callable[[dict], float]


def plus_minus_one(outcome: dict) -> float:
  """CWM's reward: +1 when the outcome says `success`, else -1."""
  return 1.0 if outcome.get("success") else -1.0


class EnvError(RuntimeError):
  """An environment could not run a step (not the agent's fault); the episode is
  dropped and counted under `reason`."""

  def __init__(self, message: str, reason: str = "env_error"):
    super().__init__(message)
    self.reason = reason


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
  """Text of token ids for acting on them; ids the tokenizer lacks are dropped."""
  n = tokenizer.vocab_size
  return tokenizer.decode([int(i) for i in ids if 0 <= int(i) < n])


def turn_text(tokenizer: Any, action: Sequence[int]) -> str:
  """Text of an agent turn: its ids up to (not including) the first stop token."""
  stops = set(tokenizer.stop_ids)
  ids = [int(i) for i in action]
  end = next((k for k, i in enumerate(ids) if i in stops), len(ids))
  return decode(tokenizer, ids[:end])


def continue_dialog(tokenizer: Any, action: Sequence[int], messages: Sequence[dict], *,
                    reasoning: bool) -> list[int]:
  """Observation ids that continue a chat dialog (FORMATS.md) after the agent turn `action`.

  `<|eot_id|>` first when the turn does not end with it (a stop string such as
  `</tool>` ended it), then `messages` (user or `tool: NAME` turns) and the next
  assistant header, prefilled with `<think>\\n` when `reasoning`. The ids are the
  ones `encode_dialog` gives those messages, so the whole episode reads as one dialog.
  """
  eot = tokenizer.special_ids[special_tokens.EOT]
  close = [] if len(action) and int(action[-1]) == eot else [eot]
  # encode_dialog starts a dialog with BOS; this continues one.
  return close + encode_dialog(tokenizer, messages, add_generation_prompt=True,
                               reasoning=reasoning)[1:]


_ELIDED = "\n[...]\n"


def shorten(text: str, limit: int) -> str:
  """`text`, or its head and tail around `[...]` when longer than `limit` characters
  (never longer than `limit`), for feedback and tool output in observations."""
  if len(text) <= limit:
    return text
  if limit <= len(_ELIDED):
    return text[:limit]
  head = (limit - len(_ELIDED)) // 2
  return text[:head] + _ELIDED + text[len(text) - (limit - len(_ELIDED) - head):]
