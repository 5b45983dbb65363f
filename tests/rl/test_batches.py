"""Advantages, filters, packing and the task mixture against NumPy/plain-Python
references: each token packed exactly once, shards balanced, env tokens masked,
solve-rate filtering, exact mixture state round trips."""

import collections
import json
import math

import numpy as np
import pytest

from cwm_jax.rl.advantages import advantages_by_group, group_advantages
from cwm_jax.rl.batching import pack_trajectories
from cwm_jax.rl.envs.base import Task
from cwm_jax.rl.filters import FilterConfig, filter_trajectories
from cwm_jax.rl.mixture import ListTasks, SolveRates, TaskMixture
from cwm_jax.rl.trajectory import AGENT, ENV, PROMPT, Trajectory


def traj(n_prompt, n_agent, n_env=0, reward=0.0, group="g", task="t", version=0, seed=0,
         logprob=-1.0, token=5):
  rng = np.random.default_rng(seed)
  src = [PROMPT] * n_prompt + [AGENT] * n_agent + [ENV] * n_env
  n = len(src)
  src = np.asarray(src)
  tokens = rng.integers(4, 50, n)
  tokens[src == AGENT] = token if token is not None else tokens[src == AGENT]
  return Trajectory(tokens, src, np.where(src == AGENT, logprob, 0.0),
                    np.where(src == AGENT, version, -1), reward, task, "toy", group)


def test_group_advantages_match_the_formula():
  r, n = [1.0, -1.0, -1.0, 1.0], [3, 10, 5, 2]
  mu = sum(ri * ni for ri, ni in zip(r, n)) / sum(n)
  np.testing.assert_allclose(group_advantages(r, n), [ri - mu for ri in r])
  std = math.sqrt(sum(ni * (ri - mu) ** 2 for ri, ni in zip(r, n)) / sum(n))
  np.testing.assert_allclose(group_advantages(r, n, std_normalise=True),
                             [(ri - mu) / (std + 1e-6) for ri in r])
  with pytest.raises(ValueError, match="lengths must be positive"):
    group_advantages([1.0], [0])


def test_zero_advantage_groups_are_found():
  ts = [traj(2, 3, reward=1.0, group="a"), traj(2, 5, reward=1.0, group="a"),
        traj(2, 3, reward=1.0, group="b"), traj(2, 4, reward=-1.0, group="b")]
  advs, zero = advantages_by_group(ts)
  assert zero == ["a"] and set(advs) == {"a", "b"}
  np.testing.assert_allclose(advs["b"], group_advantages([1.0, -1.0], [3, 4]))


def test_filters_count_stale_and_gibberish():
  cfg = FilterConfig(max_staleness=5, gibberish_min_id=40, gibberish_margin=2.0)
  vocab = 64
  low = -math.log(vocab) - 2.5  # below the threshold
  ts = [traj(2, 3, version=18), traj(2, 3, version=4, seed=1),                  # 20 - 4 > 5
        traj(2, 3, version=15, token=45, logprob=low),                           # gibberish
        traj(2, 3, version=15, token=45, logprob=-1.0),                          # confident: ok
        traj(2, 3, version=15, token=30, logprob=low)]                           # low id: ok
  kept, dropped = filter_trajectories(ts, learner_step=20, vocab_size=vocab, config=cfg)
  assert dropped == collections.Counter(stale=1, gibberish=1)
  assert [t for t in ts if t not in kept] == [ts[1], ts[2]]


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_packing_places_every_token_once_and_balances_shards(shards):
  rng = np.random.default_rng(0)
  ts = []
  for i in range(23):
    t = traj(int(rng.integers(1, 6)), int(rng.integers(1, 12)), int(rng.integers(0, 4)),
             group=f"g{i % 5}", task=f"t{i}", seed=i, token=None)
    t.advantage = float(rng.normal())
    ts.append(t)
  rows, seq = 8, 32
  packed = pack_trajectories(ts, rows=rows, seq_len=seq, shards=shards)
  a = packed.arrays
  # Every packed trajectory's tokens appear once, contiguous, in one row.
  seen = []
  for r in range(rows):
    for seg in range(1, a["segment_ids"][r].max() + 1):
      idx = np.flatnonzero(a["segment_ids"][r] == seg)
      assert (np.diff(idx) == 1).all()
      seen.append((r, idx))
  assert len(seen) == len(packed.trajectories)
  for (r, idx), t in zip(seen, packed.trajectories):
    np.testing.assert_array_equal(a["tokens"][r, idx], t.tokens)
    np.testing.assert_array_equal(a["positions"][r, idx], np.arange(len(t)))
    np.testing.assert_array_equal(a["loss_mask"][r, idx], t.sources == AGENT)  # env masked
    np.testing.assert_allclose(a["advantages"][r, idx], t.advantage)
    np.testing.assert_allclose(a["seq_weight"][r, idx], 1.0 / t.n_agent)
  assert sorted(id(t) for t in packed.trajectories + packed.leftover) == sorted(map(id, ts))
  assert int((a["segment_ids"] > 0).sum()) == sum(len(t) for t in packed.trajectories)
  # Shards (contiguous row blocks) carry near-equal token loads.
  loads = [(a["segment_ids"][s * rows // shards:(s + 1) * rows // shards] > 0).sum()
           for s in range(shards)]
  assert loads == packed.shard_tokens
  assert max(loads) - min(loads) <= max(len(t) for t in ts)


def test_packing_refuses_what_cannot_fit():
  t = traj(20, 20)
  t.advantage = 0.0
  with pytest.raises(ValueError, match="has 40 tokens, more than a learner row"):
    pack_trajectories([t], rows=2, seq_len=32)
  u = traj(2, 2)
  with pytest.raises(ValueError, match="have no advantage"):
    pack_trajectories([u], rows=2, seq_len=32)


def test_mixture_weights_resume_and_solve_rate_filter():
  tasks = {name: ListTasks([Task(f"{name}:{i}", name, {}) for i in range(5)], seed=1)
           for name in ("a", "b")}
  mix = TaskMixture(tasks, {"a": 3.0, "b": 1.0}, seed=7)
  draws = [next(mix) for _ in range(2000)]
  share = sum(n == "a" for n, _ in draws) / len(draws)
  assert abs(share - 0.75) < 0.04
  # Each epoch of a source visits every task once.
  a_ids = [t.id for n, t in draws if n == "a"][:10]
  assert sorted(a_ids[:5]) == sorted(a_ids[5:10]) == [f"a:{i}" for i in range(5)]
  # Exact resume through JSON.
  state = json.loads(json.dumps(mix.get_state()))
  ahead = [next(mix) for _ in range(20)]
  again = TaskMixture(tasks, {"a": 3.0, "b": 1.0}, seed=7)
  again.set_state(state)
  assert [next(again) for _ in range(20)] == ahead
  # Solve-rate band [0.2, 0.8]: a:0 always solved and a:1 never are skipped, counted.
  mix = TaskMixture(tasks, {"a": 1.0, "b": 1.0}, seed=0,
                    solve_rates=SolveRates(lo=0.2, hi=0.8, window=4, min_samples=2))
  for _ in range(4):
    mix.record("a:0", True)
    mix.record("a:1", False)
    mix.record("a:2", True)
    mix.record("a:2", False)
  drawn = [t.id for _, t in (next(mix) for _ in range(200))]
  assert "a:0" not in drawn and "a:1" not in drawn and "a:2" in drawn
  assert mix.skipped["solve_rate:a"] > 0
  stuck = TaskMixture({"a": tasks["a"]}, {"a": 1.0}, seed=0,
                      solve_rates=SolveRates(lo=0.5, hi=1.0, window=2, min_samples=1))
  for i in range(5):
    stuck.record(f"a:{i}", False)
  with pytest.raises(RuntimeError, match="outside the solve-rate band"):
    next(stuck)
