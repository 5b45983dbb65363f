"""Tokens/s and model FLOPs utilisation (MFU) of the training loop.

MFU uses `cwm_jax.model.flops` (formula `flops.FORMULA`: 6 x matmul params
+ causal/window-aware attention) with attention counted per packed document
of each batch actually trained on (from its segment ids), over the peak dense
bf16 FLOP/s of the devices in use. Peaks are vendor numbers for the
accelerators we know; on other devices (CPU) MFU is reported as None rather
than against a made-up peak.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np

from cwm_jax.model import flops
from cwm_jax.model.config import GLOBAL, ModelConfig

MFU_FORMULA = ("(6*P_matmul + 3*attention per packed document) per token / bf16 dense peak "
               "(cwm_jax.model.flops.FORMULA)")

# Dense bf16 FLOP/s per device (no sparsity), by a substring of `device_kind`.
PEAK_FLOPS = (
    ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
    ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
    ("TPU v4", 275e12),
)


def device_peak_flops(devices: Optional[Sequence] = None) -> Optional[float]:
  """Summed peak FLOP/s of `devices` (default: all), or None if any is unknown."""
  total = 0.0
  for d in devices or jax.devices():
    peak = next((p for name, p in PEAK_FLOPS if name in d.device_kind), None)
    if peak is None:
      return None
    total += peak
  return total


def doc_lengths(segment_ids_BT: np.ndarray) -> np.ndarray:
  """Lengths of all runs of equal segment ids, row by row (a run = one document)."""
  seg = np.asarray(segment_ids_BT)
  starts = np.ones(seg.shape, bool)
  starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
  idx = np.flatnonzero(starts.ravel())
  return np.diff(np.append(idx, seg.size))


def _pairs(n: np.ndarray, window) -> int:
  n = n.astype(np.int64)
  full = n * (n + 1) // 2
  if window is None:
    return int(full.sum())
  capped = window * (window + 1) // 2 + (n - window) * window
  return int(np.where(n <= window, full, capped).sum())


def train_flops(cfg: ModelConfig, segment_ids_BT: np.ndarray) -> float:
  """Model FLOPs of one training step on this batch (attention per document)."""
  lengths = doc_lengths(segment_ids_BT)
  per_pair = 4 * cfg.n_heads * cfg.head_dim
  attention = sum(per_pair * _pairs(lengths, None if t == GLOBAL else cfg.window)
                  for t in cfg.layer_types)
  return 3.0 * (2.0 * flops.matmul_params(cfg) * int(lengths.sum()) + attention)


class Throughput:
  """Rates over the batches added since the last `measure` call."""

  def __init__(self, cfg: ModelConfig, peak_flops: Optional[float] = None, processes: int = 1):
    """`processes`: each process adds its own rows; rates are scaled to the whole job."""
    self.cfg, self.processes = cfg, processes
    self.peak = peak_flops if peak_flops is not None else device_peak_flops()
    self._tokens, self._flops = 0, 0.0

  def add_batch(self, batch: dict) -> None:
    tokens = batch["tokens"]
    seg = batch.get("segment_ids")
    if seg is None:
      seg = np.zeros(tokens.shape, np.int32)
    self._tokens += int(np.prod(tokens.shape))
    self._flops += train_flops(self.cfg, np.asarray(seg))

  def measure(self, steps: int, seconds: float) -> dict:
    seconds = max(seconds, 1e-9)
    tokens_per_s = self.processes * self._tokens / seconds
    mfu = None if self.peak is None else self.processes * self._flops / seconds / self.peak
    self._tokens, self._flops = 0, 0.0
    return {"steps_per_s": steps / seconds, "tokens_per_s": tokens_per_s, "mfu": mfu,
            "mfu_formula": MFU_FORMULA}
