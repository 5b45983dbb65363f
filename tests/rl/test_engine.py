"""The rollout engine: greedy output equals the `Sampler`'s; one prefill per group;
continuous batching; multi-turn cache extension; in-flight weight swaps; and the
learner's float32 log-probs equal the engine's behaviour log-probs (<= 1e-5), per
token version, including across a swap mid-episode."""

import time

import jax
import numpy as np
import pytest

from cwm_jax.inference import Sampler, SamplingConfig
from cwm_jax.model import ModelConfig, init_params
from cwm_jax.model.config import GLOBAL, LOCAL
from cwm_jax.rl.batching import pack_trajectories
from cwm_jax.rl.engine import EngineConfig, GroupRequest, RolloutEngine
from cwm_jax.rl.envs.base import EnvError, StepResult, Task, plus_minus_one
from cwm_jax.rl.envs.toy import EOS, ToyChainEnv, ToyConfig
from cwm_jax.rl.trajectory import ENV
from cwm_jax.train.objectives import token_logprobs

# Scanned group (G L L L) + tail (G L); a window of 8 so rings wrap in long episodes.
CFG = ModelConfig(vocab_size=48, d_model=32, n_layers=6, n_heads=4, n_kv_heads=2, head_dim=8,
                  mlp_dim=48, layer_types=(GLOBAL, LOCAL, LOCAL, LOCAL, GLOBAL, LOCAL),
                  window=8, init_std=0.15, max_seq_len=256, rope_theta=10000.0)


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.key(0)), init_params(CFG, jax.random.key(1))


class PromptEnv:
  """Single turn on a fixed prompt; success when the turn ended with EOS."""
  name = "prompt"
  stop_token_ids = (EOS,)

  def start(self, task):
    class Episode:
      prompt = task.data["prompt"]

      def step(self, action):
        return StepResult((), True, {"success": action[-1] == EOS, "n": len(action)})
    return Episode()


def requests(env, tasks, size, reward_fn=plus_minus_one):
  return [GroupRequest(t, env, reward_fn, size, f"g{i}", i) for i, t in enumerate(tasks)]


def test_greedy_equals_the_sampler(params):
  a, _ = params
  rng = np.random.default_rng(0)
  prompts = [rng.integers(4, 48, n).tolist() for n in (3, 9, 1, 14, 6)]
  config = EngineConfig(slots=2, max_episode_tokens=64, max_turn_tokens=12,
                        sampling=SamplingConfig(temperature=0.0), stop_token_ids=(EOS,))
  engine = RolloutEngine(CFG, a, config)
  tasks = [Task(f"p{i}", "prompt", {"prompt": p}) for i, p in enumerate(prompts)]
  trajs, stats = engine.run(requests(PromptEnv(), tasks, 1))
  ref = Sampler(CFG, a, max_len=64).generate(prompts, max_new_tokens=12, stop_token_ids=[EOS])
  assert [t.tokens[len(p):].tolist() for t, p in zip(trajs, prompts)] == ref.tokens
  for t, raw in zip(trajs, ref.raw_logprobs):
    np.testing.assert_allclose(t.logprobs[t.agent_mask], raw, atol=5e-5)  # other batch shapes
  assert stats.prefills == len(prompts) and stats.episodes == len(prompts)
  engine.close()


def test_groups_share_one_prefill_and_slots_are_refilled(params):
  a, _ = params
  config = EngineConfig(slots=3, max_episode_tokens=64, max_turn_tokens=6,
                        sampling=SamplingConfig(temperature=1.0), stop_token_ids=(EOS,), seed=3)
  engine = RolloutEngine(CFG, a, config)
  tasks = [Task(f"p{i}", "prompt", {"prompt": [5 + i, 6, 7]}) for i in range(4)]
  trajs, stats = engine.run(requests(PromptEnv(), tasks, 5))
  assert stats.prefills == 4 and len(trajs) == 20  # 4 groups of 5 members, 3 slots
  # Members of a group start from the same prompt but draw their own tokens.
  firsts = [tuple(t.tokens[3:6]) for t in trajs[:5]]
  assert len(set(firsts)) > 1
  # Continuous batching: fewer decode steps than tokens generated.
  assert stats.decode_steps < stats.generated_tokens / 2
  # The same request stream gives the same episodes in any slot layout.
  again, _ = RolloutEngine(CFG, a, EngineConfig(**{**config.__dict__, "slots": 5})).run(
      requests(PromptEnv(), tasks, 5))
  assert [t.tokens.tolist() for t in again] == [t.tokens.tolist() for t in trajs]
  engine.close()


def _learner_logprobs(params_, trajs, temperature):
  """Teacher-forced log-probs of every token (position t -> token t), float32, through
  the learner's packed-batch path."""
  for t in trajs:
    t.advantage = 0.0
  packed = pack_trajectories(trajs, rows=len(trajs), seq_len=64)
  batch = {k: packed.arrays[k] for k in ("tokens", "segment_ids", "positions", "loss_mask")}
  logp, _ = jax.jit(lambda p, b: token_logprobs(p, b, CFG, temperature=temperature))(params_,
                                                                                      batch)
  logp = np.asarray(logp)
  out = {}
  for row, t in enumerate(packed.trajectories):
    start = int(np.flatnonzero(packed.arrays["segment_ids"][row] == 1)[0])
    # logp[start + k] predicts token k + 1 of the trajectory.
    out[id(t)] = np.concatenate([[np.nan], logp[row, start:start + len(t) - 1]])
  return out


def test_multi_turn_logprobs_equal_the_learner_across_a_weight_swap(params):
  """toy_chain episodes of 3 turns (observations fed by cache extension), sampling at
  T=0.7; the weights change from A to B at the 4th engine step. Per agent token, the
  learner's log-prob under that token's version equals the behaviour log-prob."""
  a, b = params
  config = EngineConfig(slots=4, max_episode_tokens=64, max_turn_tokens=3,
                        sampling=SamplingConfig(temperature=0.7), stop_token_ids=(EOS,), seed=1)
  engine = RolloutEngine(CFG, a, config)
  env = ToyChainEnv(ToyConfig(turns=3))
  steps = [0]

  def swap():
    steps[0] += 1
    if steps[0] == 4:
      engine.update_weights(b, version=1)

  trajs, stats = engine.run(requests(env, [env.task(k) for k in range(3)], 3), on_step=swap)
  assert stats.recomputes == 1 and stats.extensions > 0 and len(trajs) == 9
  assert all((t.sources == ENV).sum() == 2 * 3 for t in trajs)  # 2 observations of 3 tokens
  mixed = [t for t in trajs if len(set(t.versions[t.agent_mask].tolist())) == 2]
  assert mixed, "some episode must span the swap"
  by_version = {0: _learner_logprobs(a, trajs, 0.7), 1: _learner_logprobs(b, trajs, 0.7)}
  for t in trajs:
    for k in np.flatnonzero(t.agent_mask):
      learner = by_version[int(t.versions[k])][id(t)][k]
      assert abs(learner - t.logprobs[k]) <= 1e-5, (t.task_id, k, learner, t.logprobs[k])
  engine.close()


def test_without_recompute_the_old_keys_stay(params):
  """recompute_on_swap=False keeps the cache: tokens drawn after the swap are then not
  B's distribution over the whole prefix (their log-probs differ from the learner's)."""
  a, b = params
  config = EngineConfig(slots=2, max_episode_tokens=64, max_turn_tokens=10,
                        sampling=SamplingConfig(temperature=1.0), seed=2, recompute_on_swap=False)
  engine = RolloutEngine(CFG, a, config)
  steps = [0]

  def swap():
    steps[0] += 1
    if steps[0] == 3:
      engine.update_weights(b, version=1)

  tasks = [Task("p", "prompt", {"prompt": [5, 6, 7, 8, 9, 10]})]
  trajs, stats = engine.run(requests(PromptEnv(), tasks, 2), on_step=swap)
  assert stats.recomputes == 0
  ref = _learner_logprobs(b, trajs, 1.0)
  gaps = [abs(ref[id(t)][k] - t.logprobs[k]) for t in trajs for k in np.flatnonzero(t.agent_mask)
          if t.versions[k] == 1]
  assert gaps and max(gaps) > 1e-3
  engine.close()


class FlakyEnv:
  """Episode behaviour chosen by the prompt's second token: 0 ok, 1 env error,
  2 slow (times out), 3 reward function raises."""
  name = "flaky"

  def start(self, task):
    kind = task.data["kind"]

    class Episode:
      prompt = [1, kind + 4, 3]

      def step(self, action):
        if kind == 1:
          raise EnvError("sandbox down", reason="sandbox_error")
        if kind == 2:
          time.sleep(1.0)
        return StepResult((), True, {"success": True, "kind": kind})
    return Episode()


def test_bad_episodes_are_dropped_and_counted(params):
  a, _ = params
  config = EngineConfig(slots=4, max_episode_tokens=32, max_turn_tokens=2, env_timeout_s=0.3,
                        sampling=SamplingConfig(temperature=1.0))
  engine = RolloutEngine(CFG, a, config)

  def reward(outcome):
    if outcome.get("kind") == 3:
      raise ValueError("bad reward")
    return 1.0

  tasks = [Task(f"k{k}", "flaky", {"kind": k}) for k in range(4)]
  long_prompt = Task("long", "prompt", {"prompt": list(range(4, 40))})
  reqs = requests(FlakyEnv(), tasks, 2, reward) + [
      GroupRequest(long_prompt, PromptEnv(), reward, 2, "glong", 4)]
  trajs, stats = engine.run(reqs)
  assert [t.task_id for t in trajs] == ["k0", "k0"]
  assert dict(stats.dropped) == {"env_error:sandbox_error": 2, "env_timeout": 2,
                                 "reward_error": 2, "prompt_too_long": 2}
  engine.close()


class EndlessEnv(PromptEnv):
  stop_token_ids = ()  # the turn ends only at a length


def test_a_policy_that_never_stops_hits_the_length_cap(params):
  a, _ = params
  config = EngineConfig(slots=2, max_episode_tokens=20, max_turn_tokens=100,
                        sampling=SamplingConfig(temperature=1.0), stop_token_ids=())
  engine = RolloutEngine(CFG, a, config)
  trajs, stats = engine.run(requests(EndlessEnv(), [Task("p", "prompt", {"prompt": [5, 6]})], 2))
  assert [len(t) for t in trajs] == [20, 20] and stats.finishes["length"] == 2
  assert [t.reward for t in trajs] == [-1.0, -1.0] and trajs[0].outcome["finish"] == "length"
  engine.close()
