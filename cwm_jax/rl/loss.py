"""CWM's GRPO objective (TRAINING.md) as a training-core `Objective`, with research switches.

Per agent token t of trajectory i, with learner log-prob logp_t (at the sampling
temperature), behaviour log-prob old_t (recorded when the engine drew the token) and
the trajectory's advantage A_i (`advantages.py`):

    rho_t  = exp(logp_t - old_t)
    loss_t = -min(rho_t * A_i, clip(rho_t, 1 - clip_low, 1 + clip_high) * A_i)

summed over agent tokens only (prompt and environment tokens have weight 0) and
divided by the normaliser: CWM's constant N (`config.train.loss_normaliser`, 131,072
in the paper), no KL term, no entropy bonus. Defaults are CWM's; switches:

  normaliser="token_mean"     divide by the batch's agent-token count instead
  normaliser="sequence_mean"  mean over trajectories of each one's token mean
  kl_coef > 0                 + kl_coef * k3(ref || learner) per token, with
                              k3 = exp(ref - logp) - (ref - logp) - 1 against a frozen
                              reference policy's log-probs (`ref_logprobs`)
  sequence_ratio=True         GSPO: one ratio per trajectory, exp(mean_t(logp_t - old_t)),
                              clipped with the same bounds (use small ones, e.g. 3e-4/4e-4)
  tis_cap > 0                 truncated importance weights for rollout/learner
                              mismatch: loss_t = -min(exp(logp_t - old_t), cap) [stopped
                              gradient] * A_i * logp_t, a REINFORCE term with truncated
                              off-policy correction instead of the clipped ratio

The batch carries token-aligned [B, T] arrays (value for token t at position t):
`advantages`, `behaviour_logprobs`, `seq_weight` (1 / agent tokens of the trajectory)
and, with kl_coef > 0, `ref_logprobs`; `loss_mask` marks agent tokens and
`segment_ids` separate packed trajectories. Position t predicts token t + 1, so the
objective shifts them as the cross-entropy shifts the loss mask.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from cwm_jax.model.config import ModelConfig
from cwm_jax.train.objectives import Objective, ObjectiveSums, token_logprobs

NORMALISERS = ("constant", "token_mean", "sequence_mean")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  clip_low: float = 0.2
  clip_high: float = 0.25
  normaliser: str = "constant"     # the step divides by config.train.loss_normaliser (N)
  kl_coef: float = 0.0
  sequence_ratio: bool = False     # GSPO
  tis_cap: float = 0.0             # 0: off
  temperature: float = 1.0         # the engine's sampling temperature
  loss_chunk: int = 1024

  def __post_init__(self):
    if self.normaliser not in NORMALISERS:
      raise ValueError(f"GRPOConfig.normaliser={self.normaliser!r}: expected one of "
                       f"{NORMALISERS}.")
    for name in ("clip_low", "clip_high", "kl_coef", "tis_cap"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"GRPOConfig.{name}={getattr(self, name)!r}: expected a number >= 0.")
    if not 0 <= self.clip_low < 1:
      raise ValueError(f"GRPOConfig.clip_low={self.clip_low}: expected a number in [0, 1).")
    if not self.temperature > 0:
      raise ValueError(f"GRPOConfig.temperature={self.temperature}: expected a number > 0.")
    if self.tis_cap and self.sequence_ratio:
      raise ValueError("GRPOConfig: tis_cap and sequence_ratio are alternatives; set one.")


TOKEN_KEYS = ("advantages", "behaviour_logprobs", "seq_weight")


def _shift(a_BT):
  """Token-aligned -> target-aligned: value at t is that of token t + 1 (0 at the end)."""
  return jnp.concatenate([a_BT[:, 1:], jnp.zeros_like(a_BT[:, :1])], axis=1)


def _sequence_mean(x_BT, w_BT, segment_ids_BT):
  """Per token: the w-weighted mean of x over the tokens of its segment (row-local)."""
  B, T = x_BT.shape
  ids_BT = segment_ids_BT + (jnp.arange(B) * (T + 1))[:, None]  # unique per row
  n = B * (T + 1)
  num = jax.ops.segment_sum((x_BT * w_BT).ravel(), ids_BT.ravel(), num_segments=n)
  den = jax.ops.segment_sum(w_BT.ravel(), ids_BT.ravel(), num_segments=n)
  mean = num / jnp.where(den > 0, den, 1.0)
  return mean[ids_BT]


def token_losses(logp_BT, old_BT, adv_BT, mask_BT, cfg: GRPOConfig, segment_ids_BT=None,
                 ref_BT=None):
  """(loss per target [B, T], dict of per-target statistics), all target-aligned."""
  log_ratio_BT = logp_BT - old_BT
  lo, hi = 1.0 - cfg.clip_low, 1.0 + cfg.clip_high
  if cfg.sequence_ratio:
    log_ratio_BT = _sequence_mean(log_ratio_BT, mask_BT, segment_ids_BT)
  if cfg.tis_cap:
    weight_BT = jax.lax.stop_gradient(jnp.minimum(jnp.exp(log_ratio_BT), cfg.tis_cap))
    loss_BT = -weight_BT * adv_BT * logp_BT
    clipped_BT = jnp.exp(log_ratio_BT) > cfg.tis_cap
  else:
    ratio_BT = jnp.exp(log_ratio_BT)
    loss_BT = -jnp.minimum(ratio_BT * adv_BT, jnp.clip(ratio_BT, lo, hi) * adv_BT)
    clipped_BT = ((adv_BT > 0) & (ratio_BT > hi)) | ((adv_BT < 0) & (ratio_BT < lo))
  stats = {"clipped": clipped_BT.astype(jnp.float32),
           "ratio": jnp.exp(logp_BT - old_BT),
           # Learner vs engine on the same tokens: |log-ratio| and k3(old || new).
           "logprob_mismatch": jnp.abs(logp_BT - old_BT),
           "mismatch_kl": jnp.exp(logp_BT - old_BT) - (logp_BT - old_BT) - 1.0}
  if ref_BT is not None and cfg.kl_coef:
    kl_BT = jnp.exp(ref_BT - logp_BT) - (ref_BT - logp_BT) - 1.0
    loss_BT = loss_BT + cfg.kl_coef * kl_BT
    stats["kl_ref"] = kl_BT
  return loss_BT * mask_BT, stats


def grpo_objective(model_cfg: ModelConfig, cfg: GRPOConfig = GRPOConfig()) -> Objective:
  """The RL objective; see the module docstring."""
  token_keys = TOKEN_KEYS + (("ref_logprobs",) if cfg.kl_coef else ())

  def sums(params, batch):
    logp_BT, mask_BT = token_logprobs(params, batch, model_cfg, loss_chunk=cfg.loss_chunk,
                                      temperature=cfg.temperature)
    mask_BT = (mask_BT > 0).astype(jnp.float32)
    ref_BT = _shift(batch["ref_logprobs"]) if cfg.kl_coef else None
    loss_BT, stats = token_losses(logp_BT, _shift(batch["behaviour_logprobs"]),
                                  _shift(batch["advantages"]), mask_BT, cfg,
                                  batch.get("segment_ids"), ref_BT)
    if cfg.normaliser == "sequence_mean":
      w_BT = _shift(batch["seq_weight"]) * mask_BT
    else:
      w_BT = mask_BT
    n_tokens = jnp.sum(mask_BT)
    metrics = {"pg_loss": jnp.sum(loss_BT * w_BT), "n_agent_tokens": n_tokens,
               **{k: jnp.sum(v * mask_BT) for k, v in stats.items()}}
    return ObjectiveSums(jnp.sum(loss_BT * w_BT), jnp.sum(w_BT), metrics)

  def report(m, denom, weight):
    n = jnp.maximum(m["n_agent_tokens"], 1.0)
    out = {"loss": m["pg_loss"] / denom, "n_tokens": m["n_agent_tokens"],
           "clip_fraction": m["clipped"] / n, "ratio_mean": m["ratio"] / n,
           "logprob_mismatch": m["logprob_mismatch"] / n, "mismatch_kl": m["mismatch_kl"] / n}
    if "kl_ref" in m:
      out["kl_ref"] = m["kl_ref"] / n
    return out

  return Objective("grpo", sums, token_keys=token_keys, report=report)
