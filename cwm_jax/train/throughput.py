"""Tokens/s and model FLOPs utilisation (MFU) of the training loop.

MFU uses `cwm_jax.model.flops` (formula name `flops.FORMULA`: 6 x matmul
params + causal/window-aware attention, per token of a `seq_len` row) over the
peak dense bf16 FLOP/s of the devices in use. Peaks are vendor numbers for the
accelerators we know; on other devices (CPU) MFU is reported as None rather
than against a made-up peak.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax

from cwm_jax.model import flops
from cwm_jax.model.config import ModelConfig

MFU_FORMULA = "6*P_matmul+3*attention per token (cwm_jax.model.flops.FORMULA), bf16 dense peak"

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


class Throughput:
  """Rates over the steps since the last `measure` call."""

  def __init__(self, cfg: ModelConfig, seq_len: int, tokens_per_step: int,
               peak_flops: Optional[float] = None):
    self.tokens_per_step = tokens_per_step
    self.train_flops_per_token = flops.flops_per_token(cfg, seq_len).train
    self.peak = peak_flops if peak_flops is not None else device_peak_flops()

  def measure(self, steps: int, seconds: float) -> dict:
    seconds = max(seconds, 1e-9)
    tokens_per_s = steps * self.tokens_per_step / seconds
    mfu = None if self.peak is None else tokens_per_s * self.train_flops_per_token / self.peak
    return {"steps_per_s": steps / seconds, "tokens_per_s": tokens_per_s, "mfu": mfu,
            "mfu_formula": MFU_FORMULA}
