"""The RL learner step (GRPO objective) vs the cross-entropy step: tokens/s of
`jit_train_step` at the same [B, T] shapes and model, runs interleaved.

    python -m benchmarks.rl_learner                        # B x T = 8 x 256, 5 rounds
    python -m benchmarks.rl_learner --batch=16 --seq=1024 --rounds=7 --steps=5

The RL batch is what the producer feeds the learner: synthetic trajectories (groups
of G samples, each a prompt then agent tokens, +-1 rewards, behaviour log-probs,
versions), group advantages (`advantages.py`) and token-budget packing into [B, T]
rows (`batching.pack_trajectories`), keys `producer.ARRAY_KEYS`. The cross-entropy
batch has the same tokens, segment ids, positions and loss mask (agent tokens).
Both steps are built as the training loop builds them (`jit_train_step` with the
non-finite guard and the learning-rate schedule; RL with `grpo_objective` and the
constant normaliser, CE with the default objective and the weight normaliser), the
same `--loss_chunk`, on one device.

Each round times `--steps` steps of each objective back to back (the order
alternates between rounds); tokens/s counts all B x T positions. The table shows
every round and the median of the per-round ratios rl/ce. Compile times (first
call) are printed apart. Absolute numbers on shared CPUs are noise; read the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from cwm_jax.model import get_preset
from cwm_jax.rl.advantages import advantages_by_group
from cwm_jax.rl.batching import pack_trajectories
from cwm_jax.rl.loss import GRPOConfig, grpo_objective
from cwm_jax.rl.producer import ARRAY_KEYS
from cwm_jax.rl.trajectory import AGENT, PROMPT, Trajectory
from cwm_jax.sharding import MeshConfig, make_mesh
from cwm_jax.train import OptimizerConfig, init_train_state, jit_train_step, make_optimizer
from cwm_jax.train.optimizer import make_schedule
from cwm_jax.train.state import train_state_shardings


def synthetic_batch(rows: int, seq: int, vocab: int, group: int, seed: int) -> dict:
  """RL arrays packed from synthetic groups of trajectories, filling ~every row."""
  rng = np.random.default_rng(seed)
  trajs, g = [], 0
  while sum(len(t) for t in trajs) < 1.5 * rows * seq:  # more than fits: rows end up full
    prompt = rng.integers(4, vocab, rng.integers(seq // 16, seq // 8) + 1)
    for m in range(group):
      n = int(rng.integers(seq // 8, seq // 2))
      tokens = np.concatenate([prompt, rng.integers(4, vocab, n)])
      sources = np.array([PROMPT] * len(prompt) + [AGENT] * n)
      logprobs = np.where(sources == AGENT, -rng.uniform(0.1, 8.0, len(tokens)), 0.0)
      versions = np.where(sources == AGENT, 0, -1)
      trajs.append(Trajectory(tokens, sources, logprobs, versions, float(rng.choice([-1, 1])),
                              f"t{g}", "synthetic", f"g{g}"))
    g += 1
  advs, _ = advantages_by_group(trajs)
  for gid, adv in advs.items():
    for t, a in zip([t for t in trajs if t.group_id == gid], adv):
      t.advantage = float(a)
  packed = pack_trajectories(trajs, rows=rows, seq_len=seq)
  return {k: packed.arrays[k] for k in ARRAY_KEYS}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--steps", type=int, default=3, help="steps per objective per round")
  ap.add_argument("--vocab", type=int, default=2048)
  ap.add_argument("--d_model", type=int, default=256)
  ap.add_argument("--n_layers", type=int, default=4)
  ap.add_argument("--loss_chunk", type=int, default=1024)
  ap.add_argument("--group", type=int, default=8)
  args = ap.parse_args(argv)


  heads = max(args.d_model // 32, 2)
  cfg = get_preset("tiny", vocab_size=args.vocab, d_model=args.d_model, n_layers=args.n_layers,
                   n_heads=heads, n_kv_heads=max(heads // 2, 1), head_dim=32,
                   mlp_dim=args.d_model * 3, max_seq_len=max(args.seq, 64))
  opt_cfg = OptimizerConfig(warmup_steps=10, total_steps=10_000)
  opt = make_optimizer(opt_cfg)
  mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
  shardings = train_state_shardings(mesh, cfg, opt)
  common = dict(nonfinite_guard=True, lr_schedule=make_schedule(opt_cfg))
  steps = {
      "ce": jit_train_step(mesh, cfg, opt, shardings, loss_chunk=args.loss_chunk, **common),
      "rl": jit_train_step(mesh, cfg, opt, shardings, normaliser=float(args.batch * args.seq),
                           objective=grpo_objective(cfg, GRPOConfig(loss_chunk=args.loss_chunk)),
                           **common)}
  rl_batch = synthetic_batch(args.batch, args.seq, args.vocab, args.group, seed=0)
  batches = {"rl": rl_batch,
             "ce": {k: rl_batch[k] for k in ("tokens", "segment_ids", "positions", "loss_mask")}}
  states = {k: init_train_state(cfg, opt, jax.random.key(0), mesh=mesh) for k in steps}

  def run(name, n):
    state = states[name]
    for _ in range(n):
      state, metrics = steps[name](state, batches[name])
    jax.block_until_ready((state, metrics))
    states[name] = state
    return metrics

  compile_s = {}
  for name in steps:
    t0 = time.perf_counter()
    run(name, 1)
    compile_s[name] = time.perf_counter() - t0
    run(name, 1)  # one more: caches warm after the first execution

  tokens = args.batch * args.seq
  agent = int(rl_batch["loss_mask"].sum())
  print(f"model: d_model {cfg.d_model}, {cfg.n_layers} layers, vocab {cfg.vocab_size}; "
        f"{jax.devices()[0].platform}, 1 device; B x T = {args.batch} x {args.seq} "
        f"({np.count_nonzero(rl_batch['segment_ids']) / tokens:.0%} filled, "
        f"{agent / tokens:.0%} agent tokens, {rl_batch['segment_ids'].max(axis=1).mean():.1f} "
        f"trajectories/row); loss_chunk {args.loss_chunk}; {args.steps} steps per objective "
        f"per round; first call (compile + 1 step): ce {compile_s['ce']:.1f} s, "
        f"rl {compile_s['rl']:.1f} s")
  header = f"{'round':>5} {'order':>6} {'ce tok/s':>9} {'rl tok/s':>9} {'rl/ce':>6}"
  print(header)
  print("-" * len(header))
  ratios = []
  for r in range(args.rounds):
    order = ("ce", "rl") if r % 2 == 0 else ("rl", "ce")
    rate = {}
    for name in order:
      t0 = time.perf_counter()
      metrics = run(name, args.steps)
      rate[name] = args.steps * tokens / (time.perf_counter() - t0)
      assert np.isfinite(float(metrics["loss"])), (name, metrics)
    ratios.append(rate["rl"] / rate["ce"])
    print(f"{r:>5} {'/'.join(order):>6} {rate['ce']:>9.0f} {rate['rl']:>9.0f} {ratios[-1]:>6.2f}")
  print(f"median rl/ce tokens/s: {statistics.median(ratios):.2f}x "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
  main()
