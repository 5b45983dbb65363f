"""RL end to end on the toy environments, through `experiments.configs.rl:tiny`:
the reward rises; async with max_lag 0 reproduces the sync run exactly (both on an
8-device host split 4 + 4); a run stopped and resumed equals an uninterrupted one;
bad configs are clear errors."""

import json

import numpy as np
import pytest

from cwm_jax.rl.run import train_rl
from cwm_jax.train.config import ConfigError, experiment_config
from experiments.configs import rl as rl_config


SPLIT = {"rl.engine_devices": 4, "rl.engine_slots": 64}


def make_config(steps, **overrides):
  config = rl_config.get_config("tiny")
  config.train.steps = steps
  config.train.log_every = 1
  config.train.checkpoint_every = 1000
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return experiment_config(config)


def metrics(workdir):
  return [json.loads(l) for l in open(workdir / "metrics.jsonl")]


def test_reward_rises_on_the_toy_environments(tmp_path):
  """120 steps from a random model (engine and learner on 4 devices each, 6 groups
  of 8 episodes per step): about a minute on 2 cores."""
  train_rl(make_config(120, **{**SPLIT, "rl.groups_per_step": 6, "data.batch_size": 12,
                               "rl.engine_slots": 48}), str(tmp_path))
  rows = metrics(tmp_path)
  assert [r["step"] for r in rows] == list(range(1, 121))
  first = np.mean([r["reward_mean"] for r in rows[:20]])
  last = np.mean([r["reward_mean"] for r in rows[-20:]])
  assert last > first + 0.5, (first, last)
  for key in ("reward_mean/copy", "reward_mean/chain", "pass_rate/copy", "clip_fraction",
              "logprob_mismatch", "staleness_mean", "zero_advantage_groups",
              "engine_tokens_per_s", "tokens_per_s", "time/wait_s", "response_tokens_mean"):
    assert key in rows[-1], key
  # Sync: every token was drawn by the weights the learner stepped from.
  assert all(r["staleness_max"] == 0 for r in rows)
  assert max(r["logprob_mismatch"] for r in rows) < 1e-5


@pytest.fixture(scope="module")
def sync_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sync")
  train_rl(make_config(6, **SPLIT), str(workdir))
  return metrics(workdir)


def _comparable(rows):
  drop = ("tokens_per_s", "steps_per_s", "time/", "engine_tokens_per_s", "eta", "mfu")
  return [{k: v for k, v in r.items() if not any(k.startswith(d) for d in drop)} for r in rows]


def test_async_with_max_lag_zero_is_the_sync_run(sync_run, tmp_path):
  """8 devices split 4 (engine) + 4 (learner): the async actor thread with max_lag 0
  gives the same metrics, bit for bit, as taking turns."""
  train_rl(make_config(6, **SPLIT, **{"rl.mode": "async", "rl.max_lag": 0}), str(tmp_path))
  assert _comparable(metrics(tmp_path)) == _comparable(sync_run)


def test_async_runs_ahead_with_a_lag(tmp_path):
  train_rl(make_config(5, **SPLIT, **{"rl.mode": "async", "rl.max_lag": 2}), str(tmp_path))
  rows = metrics(tmp_path)
  assert len(rows) == 5 and all(r["staleness_max"] <= 2 + 1 for r in rows)


def test_stopped_and_resumed_equals_uninterrupted(sync_run, tmp_path):
  """3 steps, then the same command to 6: the producer's state (task mixture,
  outcomes, leftover trajectories) rides in the checkpoint."""
  train_rl(make_config(3, **SPLIT, **{"train.checkpoint_every": 3}), str(tmp_path))
  train_rl(make_config(6, **SPLIT, **{"train.checkpoint_every": 3}), str(tmp_path))
  assert _comparable(metrics(tmp_path)) == _comparable(sync_run)


def test_bad_rl_configs_are_clear_errors(tmp_path):
  with pytest.raises(ConfigError, match=r"config.rl.normaliser='token_mean' divides by the "
                                        r"batch's own weight"):
    make_config(2, **{"rl.normaliser": "token_mean"})
  with pytest.raises(ConfigError, match=r"config.rl.max_episode_tokens=99"):
    make_config(2, **{"rl.max_episode_tokens": 99})
  with pytest.raises(ConfigError, match=r"config.rl.envs\[0\].kind='nope'"):
    config = rl_config.get_config("tiny")
    config.rl.envs[0]["kind"] = "nope"
    experiment_config(config)
  with pytest.raises(ConfigError, match=r"config.rl.envs\[0\].tasks='/no/such.jsonl' does not "
                                        r"exist"):
    config = rl_config.get_config("tiny")
    config.rl.envs[0].update(kind="code", tasks="/no/such.jsonl")
    experiment_config(config)
  with pytest.raises(ConfigError, match="engine_devices=8: the engine's sub-mesh needs devices"):
    train_rl(make_config(2, **{"rl.engine_devices": 8}), str(tmp_path / "a"))


def test_init_from_another_model_is_refused(tmp_path):
  from cwm_jax.convert import save_orbax
  from cwm_jax.model import get_preset, init_params
  import jax
  other = get_preset("tiny", vocab_size=32, d_model=32)
  save_orbax(init_params(other, jax.random.key(0)), other, str(tmp_path / "other"))
  with pytest.raises(ConfigError, match="d_model"):
    train_rl(make_config(2, init_from=str(tmp_path / "other")), str(tmp_path / "run"))
