"""Token-budget batches: trajectories packed into fixed [B, T] rows for the learner.

Each trajectory goes whole into one row (a trajectory longer than T is an error: the
engine caps episodes at T tokens), rows hold several trajectories separated by
segment ids (1, 2, ... ; 0 is padding) with positions restarting at 0, and every
token appears exactly once. Packing is first-fit decreasing by length onto the
least-filled row; trajectories that do not fit wait for the next batch (returned as
`leftover`, in their original order). Rows are then dealt to the data-parallel
shards (contiguous blocks of B / shards rows) in snake order of their token load,
so every shard gets a near-equal share of the work.

Arrays (token-aligned: the value of token t at index t; the objective shifts them to
its targets): tokens, segment_ids, positions, loss_mask (1 on agent tokens),
advantages (the trajectory's A), behaviour_logprobs, seq_weight (1 / the trajectory's
agent-token count), versions (-1 off agent tokens), all [B, T].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from cwm_jax.rl.trajectory import Trajectory


@dataclasses.dataclass
class PackedBatch:
  arrays: dict
  trajectories: list[Trajectory]   # the packed ones, in row order
  leftover: list[Trajectory]       # did not fit; carry to the next batch
  shard_tokens: list[int]          # tokens per data-parallel shard


def pack_trajectories(trajectories: Sequence[Trajectory], *, rows: int, seq_len: int,
                      shards: int = 1) -> PackedBatch:
  """See the module docstring; each trajectory's `advantage` must be set."""
  if rows % shards:
    raise ValueError(f"pack_trajectories: rows={rows} is not divisible by shards={shards}.")
  missing = [t.task_id for t in trajectories if t.advantage is None]
  if missing:
    raise ValueError(f"pack_trajectories: trajectories {missing[:3]} have no advantage; compute "
                     "group advantages first.")
  for t in trajectories:
    if len(t) > seq_len:
      raise ValueError(f"trajectory {t.task_id!r} ({t.group_id}) has {len(t)} tokens, more than "
                       f"a learner row ({seq_len}); cap episodes at the row length.")
  order = sorted(range(len(trajectories)), key=lambda i: (-len(trajectories[i]), i))
  fill = [0] * rows
  content: list[list[int]] = [[] for _ in range(rows)]
  placed = set()
  for i in order:
    n = len(trajectories[i])
    fits = [r for r in range(rows) if fill[r] + n <= seq_len]
    if not fits:
      continue
    r = min(fits, key=lambda r: (fill[r], r))
    content[r].append(i)
    fill[r] += n
    placed.add(i)
  # Rows in snake order of load over the shards: shard s gets rows s, 2S-1-s, ...
  by_load = sorted(range(rows), key=lambda r: (-fill[r], r))
  per = rows // shards
  slots = [[] for _ in range(shards)]
  for k, r in enumerate(by_load):
    lap, pos = divmod(k, shards)
    slots[pos if lap % 2 == 0 else shards - 1 - pos].append(r)
  row_order = [r for s in slots for r in s]
  assert all(len(s) == per for s in slots)

  arrays = {k: np.zeros((rows, seq_len), dt) for k, dt in (
      ("tokens", np.int32), ("segment_ids", np.int32), ("positions", np.int32),
      ("loss_mask", np.int32), ("advantages", np.float32), ("behaviour_logprobs", np.float32),
      ("seq_weight", np.float32), ("versions", np.int32))}
  arrays["versions"][:] = -1
  packed = []
  for out_row, r in enumerate(row_order):
    start = 0
    for seg, i in enumerate(sorted(content[r]), start=1):
      t, n = trajectories[i], len(trajectories[i])
      sl = slice(start, start + n)
      arrays["tokens"][out_row, sl] = t.tokens
      arrays["segment_ids"][out_row, sl] = seg
      arrays["positions"][out_row, sl] = np.arange(n)
      arrays["loss_mask"][out_row, sl] = t.agent_mask
      arrays["advantages"][out_row, sl] = t.advantage
      arrays["behaviour_logprobs"][out_row, sl] = np.where(t.agent_mask, t.logprobs, 0.0)
      arrays["seq_weight"][out_row, sl] = 1.0 / t.n_agent
      arrays["versions"][out_row, sl] = np.where(t.agent_mask, t.versions, -1)
      packed.append(t)
      start += n
  shard_tokens = [int(sum(fill[r] for r in s)) for s in slots]
  leftover = [trajectories[i] for i in range(len(trajectories)) if i not in placed]
  return PackedBatch(arrays, packed, leftover, shard_tokens)
