"""The GRPO objective against a NumPy reference on random inputs (every switch), and
its gradients invariant to micro-batching and to how trajectories are packed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwm_jax.model import get_preset, init_params, transformer
from cwm_jax.rl.batching import pack_trajectories
from cwm_jax.rl.loss import GRPOConfig, grpo_objective, token_losses
from cwm_jax.rl.trajectory import AGENT, ENV, PROMPT, Trajectory
from cwm_jax.train import OptimizerConfig, init_train_state, make_optimizer, train_step

FAST_COMPILE = {"xla_backend_optimization_level": 0}


def np_token_losses(logp, old, adv, mask, seg, cfg, ref=None):
  """Per target: the loss of the module docstring, written out in NumPy (float64)."""
  logp, old, adv = (np.asarray(a, np.float64) for a in (logp, old, adv))
  log_ratio = logp - old
  if cfg.sequence_ratio:
    seq = np.zeros_like(log_ratio)
    for b in range(logp.shape[0]):
      for s in np.unique(seg[b]):
        sel = seg[b] == s
        w = mask[b, sel]
        seq[b, sel] = (log_ratio[b, sel] * w).sum() / max(w.sum(), 1e-30) if w.sum() else 0.0
    log_ratio = seq
  ratio = np.exp(log_ratio)
  if cfg.tis_cap:
    loss = -np.minimum(ratio, cfg.tis_cap) * adv * logp
  else:
    loss = -np.minimum(ratio * adv, np.clip(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high) * adv)
  if cfg.kl_coef:
    loss = loss + cfg.kl_coef * (np.exp(ref - logp) - (ref - logp) - 1)
  return loss * mask


CASES = {"cwm": GRPOConfig(), "tis": GRPOConfig(tis_cap=2.0),
         "gspo": GRPOConfig(sequence_ratio=True, clip_low=3e-4, clip_high=4e-4),
         "kl": GRPOConfig(kl_coef=0.05), "symmetric": GRPOConfig(clip_low=0.1, clip_high=0.1)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_token_losses_match_numpy(name):
  cfg = CASES[name]
  rng = np.random.default_rng(0)
  B, T = 3, 20
  logp = -rng.uniform(0.1, 3, (B, T))
  old = logp + rng.normal(0, 0.3, (B, T))  # ratios on both sides of the clip range
  adv = np.repeat(rng.normal(0, 1, (B, 4)), 5, axis=1)
  seg = np.repeat(np.arange(1, 5)[None], B, 0).repeat(5, axis=1)
  mask = (rng.random((B, T)) < 0.7).astype(np.float64)
  ref = logp + rng.normal(0, 0.2, (B, T))
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  got, stats = jax.jit(lambda *a: token_losses(*a[:4], cfg, *a[4:]))(
      f32(logp), f32(old), f32(adv), f32(mask), jnp.asarray(seg), f32(ref))
  want = np_token_losses(logp, old, adv, mask, seg, cfg, ref)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
  ratio = np.exp(logp - old)
  if not cfg.tis_cap and not cfg.sequence_ratio:
    clipped = ((adv > 0) & (ratio > 1 + cfg.clip_high)) | ((adv < 0) & (ratio < 1 - cfg.clip_low))
    np.testing.assert_array_equal(np.asarray(stats["clipped"]) > 0, clipped)
    assert 0 < clipped[mask > 0].mean() < 1
  np.testing.assert_allclose(stats["logprob_mismatch"], np.abs(logp - old), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- through the model

CFG = get_preset("tiny", vocab_size=64, d_model=32, n_layers=2, scan_period=2,
                 layer_types=("global", "local"), n_heads=4, n_kv_heads=2, head_dim=8,
                 mlp_dim=64, window=8, attention_impl="reference")
OPT = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=0, schedule="constant",
                                     eps=1e-3))
ROWS, SEQ = 4, 32


def trajectories(seed=0):
  """8 trajectories of 2 groups: prompt, agent turn, env observation, agent turn."""
  rng = np.random.default_rng(seed)
  out = []
  for g in range(2):
    for m in range(4):
      parts = [(PROMPT, rng.integers(3, 6)), (AGENT, rng.integers(2, 6)), (ENV, rng.integers(1, 3)),
               (AGENT, rng.integers(1, 4))]
      src = np.concatenate([np.full(n, s) for s, n in parts])
      n = len(src)
      t = Trajectory(rng.integers(0, CFG.vocab_size, n), src,
                     np.where(src == AGENT, -rng.uniform(0.5, 4, n), 0.0),
                     np.where(src == AGENT, 0, -1), float(rng.choice([-1.0, 1.0])),
                     f"task{g}", "toy", f"g{g}")
      t.advantage = float(rng.normal())
      out.append(t)
  return out


def _batch(packed):
  return {k: jnp.asarray(v) for k, v in packed.arrays.items() if k != "versions"}


@pytest.mark.parametrize("name", ["cwm", "gspo", "kl"])
def test_objective_equals_numpy_on_dense_logits(name):
  """The objective's loss sum equals the NumPy formula on log-probs from the full
  [B, T, V] logits, shifted to targets by hand."""
  cfg = CASES[name]
  params = init_params(CFG, jax.random.key(0))
  packed = pack_trajectories(trajectories(), rows=ROWS, seq_len=SEQ)
  assert not packed.leftover
  batch = _batch(packed)
  rng = np.random.default_rng(5)
  batch["ref_logprobs"] = jnp.asarray(-rng.uniform(0.5, 3, (ROWS, SEQ)), jnp.float32)
  objective = grpo_objective(CFG, cfg)
  if not cfg.kl_coef:
    del batch["ref_logprobs"]
  sums = jax.jit(objective.sums)(params, batch)
  a = packed.arrays
  logits = np.asarray(transformer.forward(params, batch["tokens"], CFG, batch["positions"],
                                          batch["segment_ids"]), np.float64) / cfg.temperature
  logsm = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  nxt = lambda x: np.concatenate([x[:, 1:], np.zeros_like(x[:, :1])], 1)
  logp = np.take_along_axis(logsm, nxt(a["tokens"])[..., None], -1)[..., 0]
  mask = nxt(a["loss_mask"]) * (nxt(a["segment_ids"]) == a["segment_ids"])
  want = np_token_losses(logp, nxt(a["behaviour_logprobs"]), nxt(a["advantages"]), mask,
                         a["segment_ids"], cfg, nxt(np.asarray(batch.get("ref_logprobs", 0 * logp))))
  np.testing.assert_allclose(sums.loss, want.sum(), rtol=1e-4)
  assert float(sums.weight) == mask.sum() == sum(t.n_agent for t in packed.trajectories) - \
      sum(int(t.sources[0] == AGENT) for t in packed.trajectories)


@pytest.fixture(scope="module")
def state():
  return init_train_state(CFG, OPT, jax.random.key(1), compiler_options=FAST_COMPILE)


step_fn = jax.jit(train_step, static_argnames=("objective", "optimizer", "model_cfg", "accum_steps",
                                               "normaliser"), compiler_options=FAST_COMPILE)


@pytest.mark.parametrize("normaliser", ["constant", "token_mean", "sequence_mean"])
def test_gradients_invariant_to_micro_batching_and_packing(state, normaliser):
  """The same trajectories packed into other rows (other shard count, reversed input
  order) and split into micro-batches: the same update."""
  objective = grpo_objective(CFG, GRPOConfig(normaliser=normaliser))
  step_norm = 131072.0 if normaliser == "constant" else "weight"
  trajs = trajectories(seed=3)
  a = _batch(pack_trajectories(trajs, rows=ROWS, seq_len=SEQ))
  b = _batch(pack_trajectories(trajs[::-1], rows=ROWS, seq_len=SEQ, shards=2))
  assert not np.array_equal(a["tokens"], b["tokens"])  # really another layout
  run = lambda batch, accum: step_fn(state, batch, objective=objective, optimizer=OPT,
                                     model_cfg=CFG, accum_steps=accum, normaliser=step_norm)
  ref, ref_m = run(a, 1)
  # Every normaliser: other packing, and 2 micro-batches; the constant one also 4.
  variants = ((b, 1), (a, 2), (b, 4)) if normaliser == "constant" else ((b, 1), (a, 2))
  for batch, accum in variants:
    new, m = run(batch, accum)
    np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-5)
    for got, want in zip(jax.tree.leaves(new.params), jax.tree.leaves(ref.params)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert float(ref_m["grad_norm"]) > 0
