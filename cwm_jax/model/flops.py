"""Model FLOPs of the CWM decoder, counted from the config (nothing is traced).

One multiply-add is 2 FLOPs. Per token, the forward pass costs

    matmul    = 2 * P_matmul,
                P_matmul = L * (D*N*H + 2*D*K*H + N*H*D + 3*D*F) + D*V
                (q, k, v, o, gate, up, down in every layer, plus lm_head; the
                 embedding is a gather (free); norms, RoPE, SiLU and softmax are
                 elementwise and not counted)
    attention = sum over layers of 4*N*H * pairs(layer) / T
                pairs = the (query, key) pairs the mask lets through:
                  global layer: sum_i (i + 1)          = T(T+1)/2     (causal)
                  local layer:  sum_i min(i + 1, W)                   (window W,
                                                        keys incl. the query)
                  packed documents: the sum runs per document (positions restart,
                  no attention across documents).
                Each visible pair costs one H-long dot for q.k (2H FLOPs per head)
                and one for p.v (2H per head): 4*N*H.

Training (forward + backward) is 3x forward: the backward pass computes the
gradient w.r.t. both the inputs and the weights of every matmul (2x). So
training FLOPs/token = 6*P_matmul + 3*attention: the "6*N*tokens" rule with N the
matmul parameters, plus mask-aware attention. These are *model* FLOPs, used for
MFU; recomputation (remat) is not counted there, but `hardware_flops_per_token`
adds it (remat="full" re-runs the forward: 4x; "dots" re-runs attention and the
elementwise ops only: ~3x matmul + 4x attention).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from cwm_jax.model.config import GLOBAL, ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
  """Weights touched by a matmul per token: all layer projections plus lm_head."""
  D, N, K, H, F = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim
  per_layer = D * N * H + 2 * D * K * H + N * H * D + 3 * D * F
  return cfg.n_layers * per_layer + D * cfg.vocab_size


def _pairs_one_doc(n: int, window: Optional[int]) -> int:
  """sum_{i<n} min(i+1, W) in closed form (W = n when there is no window)."""
  if window is None or window >= n:
    return n * (n + 1) // 2
  return window * (window + 1) // 2 + (n - window) * window


def attention_pairs(seq_len: int, window: Optional[int] = None,
                    doc_lengths: Optional[Sequence[int]] = None) -> int:
  """Visible (query, key) pairs of one causal row of `seq_len` tokens.

  `window` (None = global) counts keys including the query. `doc_lengths`, if
  given, splits the row into packed documents (they must sum to `seq_len`).
  """
  if seq_len <= 0:
    raise ValueError(f"attention_pairs: seq_len={seq_len}, expected a positive integer.")
  if window is not None and window <= 0:
    raise ValueError(f"attention_pairs: window={window}, expected a positive integer or None.")
  if doc_lengths is None:
    return _pairs_one_doc(seq_len, window)
  doc_lengths = [int(n) for n in doc_lengths]
  if any(n <= 0 for n in doc_lengths) or sum(doc_lengths) != seq_len:
    raise ValueError(f"attention_pairs: doc_lengths {doc_lengths[:8]}{'...' if len(doc_lengths) > 8 else ''} "
                     f"must be positive and sum to seq_len={seq_len} (got {sum(doc_lengths)}).")
  return sum(_pairs_one_doc(n, window) for n in doc_lengths)


def doc_lengths_from_segments(segment_ids_T: Sequence[int]) -> list[int]:
  """Lengths of the runs of equal ids in one packed row (a run = one document)."""
  lengths, prev = [], object()
  for s in segment_ids_T:
    s = int(s)
    if lengths and s == prev:
      lengths[-1] += 1
    else:
      lengths.append(1)
    prev = s
  return lengths


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """Per-token forward FLOPs, split; training = 3x forward."""

  matmul: float     # 2 * matmul_params
  attention: float  # 4*N*H*pairs/T summed over layers

  @property
  def forward(self) -> float:
    return self.matmul + self.attention

  @property
  def train(self) -> float:
    return 3 * self.forward

  @property
  def attention_fraction(self) -> float:
    return self.attention / self.forward


def flops_per_token(cfg: ModelConfig, seq_len: int,
                    doc_lengths: Optional[Sequence[int]] = None) -> FlopCount:
  """Model FLOPs per token of a `seq_len` row (optionally packed documents)."""
  per_pair = 4 * cfg.n_heads * cfg.head_dim
  by_type = {}
  attention = 0
  for layer_type in cfg.layer_types:
    window = None if layer_type == GLOBAL else cfg.window
    if layer_type not in by_type:
      by_type[layer_type] = attention_pairs(seq_len, window, doc_lengths)
    attention += per_pair * by_type[layer_type]
  return FlopCount(matmul=2.0 * matmul_params(cfg), attention=attention / seq_len)


def attention_flops_by_type(cfg: ModelConfig, seq_len: int,
                            doc_lengths: Optional[Sequence[int]] = None) -> dict[str, float]:
  """Forward attention FLOPs per token, summed separately over global and local layers."""
  per_pair = 4 * cfg.n_heads * cfg.head_dim
  out: dict[str, float] = {}
  for layer_type in cfg.layer_types:
    window = None if layer_type == GLOBAL else cfg.window
    out[layer_type] = out.get(layer_type, 0.0) + (
        per_pair * attention_pairs(seq_len, window, doc_lengths) / seq_len)
  return out


def train_flops_per_step(cfg: ModelConfig, batch: int, seq_len: int,
                         doc_lengths: Optional[Sequence[int]] = None) -> float:
  """Model FLOPs of one training step over `batch` rows of `seq_len` tokens."""
  return flops_per_token(cfg, seq_len, doc_lengths).train * batch * seq_len


def hardware_flops_per_token(cfg: ModelConfig, seq_len: int, remat: str = "none",
                             doc_lengths: Optional[Sequence[int]] = None) -> float:
  """Training FLOPs actually executed per token, counting rematerialisation.

  none: 3x forward. full: the whole forward is recomputed in the backward pass
  (4x). dots / dots_no_batch: matmul outputs are saved, attention's score/value
  products (not saved by the kernels) are recomputed: 3x matmul + 4x attention.
  The lm_head is outside the remat scope and never recomputed.
  """
  f = flops_per_token(cfg, seq_len, doc_lengths)
  head = 2.0 * cfg.d_model * cfg.vocab_size
  if remat == "none":
    return f.train
  if remat == "full":
    return f.train + (f.matmul - head) + f.attention
  if remat in ("dots", "dots_no_batch"):
    return f.train + f.attention
  raise ValueError(f"hardware_flops_per_token: remat={remat!r}, expected none, full, dots or dots_no_batch.")


def mfu(tokens_per_second: float, cfg: ModelConfig, seq_len: int, peak_flops: float,
        doc_lengths: Optional[Sequence[int]] = None) -> float:
  """Model FLOPs utilisation: tokens/s * train FLOPs/token / peak FLOP/s (all devices)."""
  return tokens_per_second * flops_per_token(cfg, seq_len, doc_lengths).train / peak_flops


FORMULA = ("MFU = tokens/s * (6*P_matmul + 3*A) / peak; P_matmul = L*(2DNH+2DKH+3DF) + DV "
           "(embedding gather not counted), A = sum_layers 4*N*H*pairs/T with "
           "pairs = T(T+1)/2 (global, causal) or sum_i min(i+1, W) (local), per document if packed")
