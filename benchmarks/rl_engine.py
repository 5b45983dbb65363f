"""Rollout engine (continuous batching) vs the `Sampler`'s static batches: generated
tokens/s on the same prompts with mixed response lengths, the same model and the
same number of concurrent rows.

    python -m benchmarks.rl_engine                                 # 64 prompts, 16 rows
    python -m benchmarks.rl_engine --prompts=128 --rows=16 --min_len=16 --max_len=512 --rounds=2

Workload: `--prompts` random prompts of `--prompt_len` tokens, prompt i with a
response budget n_i drawn uniformly from [min_len, max_len] (seeded). Sampling at
temperature 1 with no stop token, so every response is exactly its budget long and
both sides produce the same useful tokens, sum(n_i):
  engine   `RolloutEngine` with `slots = rows`, one single-turn episode per prompt
           (G = 1); a finished episode's slot is refilled at the next step.
  sampler  `Sampler.generate` on static batches of `rows` consecutive prompts, each
           run to the longest budget of its batch (as a static batch does); the
           tokens past a prompt's own budget are wasted work, not counted.
Both decode with the same jitted forward (`extend` of one token per row) over a
KV cache of prompt_len + max_len slots (the Sampler's cache is bucketed to a power
of two, capped there).

Per-episode budgets in the engine: `EngineConfig.max_turn_tokens` is global and the
engine has no per-episode token budget, so each prompt gets its own environment
object whose `stop_strings` is "x" * n_i under a stand-in tokenizer that decodes
every id to one "x": the engine's own stop-string check ends the turn after exactly
n_i tokens, and the environment then ends the episode. That check decodes the
whole turn each token (O(n^2) per episode); its cost is measured separately
(`stop-check s`) and is included in the engine's time.

Each side runs once to warm up (compilation), then `--rounds` rounds of both, the
order alternating; the table shows each side's best round, then the ratio
engine/sampler of every round (sides run back to back), their median, and the
ratio of the two best rounds (the least disturbed ones). Absolute
times on shared CPUs are noise; read the ratios. `ideal` is the ratio of decode
steps (sampler / engine): the speed-up if a step cost the same on both sides.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from cwm_jax.inference import Sampler
from cwm_jax.inference import sampler as sampler_lib
from cwm_jax.inference.sampling import SamplingConfig
from cwm_jax.inference.stopping import StopCriteria
from cwm_jax.model import get_preset, init_params
from cwm_jax.model.kv_cache import init_cache
from cwm_jax.rl.engine import EngineConfig, GroupRequest, RolloutEngine
from cwm_jax.rl.envs.base import StepResult, Task


class OneCharTokenizer:
  """Decodes every id to "x" (only for the engine's stop-string check)."""

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size

  def decode(self, ids) -> str:
    return "x" * len(ids)


class BudgetEnv:
  """One prompt, single turn: the turn ends after `budget` tokens (its stop string),
  then the episode ends. One object per prompt (the engine reads `stop_strings`
  from a request's env)."""
  name = "budget"

  def __init__(self, prompt, budget: int):
    self.prompt, self.stop_strings = list(prompt), ("x" * budget,)

  def start(self, task):
    return self

  def step(self, action):
    return StepResult((), True, {"success": True, "n": len(action)})


def run_engine(engine, prompts, budgets):
  reqs = [GroupRequest(Task(f"p{i}", "budget", {}), BudgetEnv(p, n),
                       lambda outcome: 1.0, 1, f"g{i}", i)
          for i, (p, n) in enumerate(zip(prompts, budgets))]
  t0 = time.perf_counter()
  trajs, stats = engine.run(reqs)
  seconds = time.perf_counter() - t0
  ok = len(trajs) == len(budgets) and all(t.n_agent == n for t, n in zip(trajs, budgets))
  return seconds, stats.decode_steps, stats.prefills, ok


def run_sampler(sampler, prompts, budgets, rows, sampling):
  t0 = time.perf_counter()
  steps = prefills = 0
  ok = True
  for s in range(0, len(prompts), rows):
    batch_budgets = budgets[s:s + rows]
    out = sampler.generate(prompts[s:s + rows], max_new_tokens=max(batch_budgets),
                           sampling=sampling, seed=s)
    ok &= all(len(t) == max(batch_budgets) for t in out.tokens)
    steps += max(batch_budgets) - 1
    prefills += 1
  return time.perf_counter() - t0, steps, prefills, ok


def bare_step_ms(cfg, params, rows: int, cache_len: int, steps: int = 20) -> float:
  """One jitted decode step (forward + sampling, no host loop) at the benchmark's shapes."""
  params = jax.device_put(params, jax.devices()[0])
  cache = init_cache(cfg, rows, cache_len)
  tok = jnp.zeros((rows,), jnp.int32)
  keys = jax.random.split(jax.random.key(0), rows)
  knobs = (jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0))
  decode = sampler_lib._DECODE  # pylint: disable=protected-access
  run = lambda c: decode(params, c, tok, keys, jnp.int32(1), *knobs, cfg=cfg, greedy=False,
                         filtered=False)
  for _ in range(2):  # the second call compiles again (the first one's cache was uncommitted)
    cache, *out = run(cache)
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  for _ in range(steps):
    cache, *out = run(cache)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps * 1e3


def stop_check_seconds(budgets, vocab: int) -> float:
  """What the engine's stop-string emulation of per-episode budgets costs, alone."""
  tok = OneCharTokenizer(vocab)
  t0 = time.perf_counter()
  for n in budgets:
    tokens, checked = [], 0
    for _ in range(n):
      tokens.append(5)
      criteria = StopCriteria(10**9, (), ("x" * n,), tok)  # built per token, as the engine does
      _, checked = criteria.check(tokens, checked)
  return time.perf_counter() - t0


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--prompts", type=int, default=64)
  ap.add_argument("--rows", type=int, default=16, help="engine slots = Sampler batch size")
  ap.add_argument("--prompt_len", type=int, default=16)
  ap.add_argument("--min_len", type=int, default=16)
  ap.add_argument("--max_len", type=int, default=512)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--vocab", type=int, default=2048)
  ap.add_argument("--d_model", type=int, default=256)
  ap.add_argument("--n_layers", type=int, default=4)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)


  L = args.prompt_len + args.max_len
  heads = max(args.d_model // 32, 2)
  cfg = get_preset("tiny", vocab_size=args.vocab, d_model=args.d_model, n_layers=args.n_layers,
                   n_heads=heads, n_kv_heads=max(heads // 2, 1), head_dim=32,
                   mlp_dim=args.d_model * 3, max_seq_len=max(L, 64))
  params = init_params(cfg, jax.random.key(args.seed))
  rng = np.random.default_rng(args.seed)
  prompts = rng.integers(4, args.vocab, (args.prompts, args.prompt_len)).tolist()
  budgets = rng.integers(args.min_len, args.max_len + 1, args.prompts).tolist()
  sampling = SamplingConfig(temperature=1.0)
  engine = RolloutEngine(cfg, params, EngineConfig(
      slots=args.rows, max_episode_tokens=L, max_turn_tokens=args.max_len, sampling=sampling,
      env_workers=2, seed=args.seed), tokenizer=OneCharTokenizer(args.vocab))
  sampler = Sampler(cfg, params, max_len=L)

  sides = {"engine": lambda: run_engine(engine, prompts, budgets),
           "sampler": lambda: run_sampler(sampler, prompts, budgets, args.rows, sampling)}
  for fn in sides.values():
    fn()  # warm-up: compiles every shape used
  best, ratios = {}, []
  for r in range(args.rounds):
    seconds = {}
    for name in (("engine", "sampler") if r % 2 == 0 else ("sampler", "engine")):
      result = sides[name]()
      seconds[name] = result[0]
      if name not in best or result[0] < best[name][0]:
        best[name] = result
    ratios.append(seconds["sampler"] / seconds["engine"])
  engine.close()

  useful = sum(budgets)
  print(f"model: d_model {cfg.d_model}, {cfg.n_layers} layers, vocab {cfg.vocab_size} "
        f"({sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f}M params); "
        f"{jax.devices()[0].platform}; {args.prompts} prompts of {args.prompt_len} tokens, "
        f"budgets uniform in [{args.min_len}, {args.max_len}] (mean {np.mean(budgets):.0f}); "
        f"{args.rows} rows; temperature 1; best of {args.rounds} rounds")
  header = (f"{'side':8} {'useful tok':>10} {'seconds':>8} {'tok/s':>8} {'decode steps':>12} "
            f"{'prefills':>8} {'ms/step':>8} {'budgets met':>11}")
  print(header)
  print("-" * len(header))
  for name, (sec, steps, prefills, ok) in best.items():
    print(f"{name:8} {useful:>10} {sec:>8.2f} {useful / sec:>8.0f} {steps:>12} {prefills:>8} "
          f"{sec / steps * 1e3:>8.2f} {str(ok):>11}")
  (es, esteps, _, _), (ss, ssteps, _, _) = best["engine"], best["sampler"]
  print(f"engine/sampler tokens/s: median {statistics.median(ratios):.2f}x over rounds "
        f"({', '.join(f'{x:.2f}' for x in ratios)}); best rounds: {ss / es:.2f}x")
  print(f"ideal (sampler steps / engine steps): "
        f"{ssteps / esteps:.2f}x   sampler useful fraction: "
        f"{useful / (ssteps + len(range(0, args.prompts, args.rows))) / args.rows:.2f}")
  print(f"bare jitted decode step ({args.rows} rows, cache {L}): "
        f"{bare_step_ms(cfg, params, args.rows, L):.2f} ms")
  print(f"stop-check s (engine's per-episode budget emulation, alone): "
        f"{stop_check_seconds(budgets, args.vocab):.2f}")


if __name__ == "__main__":
  main()
