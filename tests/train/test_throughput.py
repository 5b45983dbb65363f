"""Batch FLOPs for MFU: the vectorised per-document count equals cwm_jax.model.flops
applied row by row (its closed-form pairs and run-length splitting)."""

import numpy as np
import pytest

from cwm_jax.model import flops
from cwm_jax.model.config import get_preset
from cwm_jax.train.throughput import Throughput, train_flops


def reference(cfg, segment_ids_BT):
  total = 0.0
  for row in segment_ids_BT:
    docs = flops.doc_lengths_from_segments(row)
    total += flops.flops_per_token(cfg, len(row), docs).train * len(row)
  return total


@pytest.mark.parametrize("window", [4, 16, 1000])
def test_train_flops_matches_row_by_row_reference(window):
  cfg = get_preset("tiny", window=window)
  rng = np.random.default_rng(0)
  seg = np.sort(rng.integers(0, 5, (3, 64)), axis=1)  # packed rows, runs of equal ids
  seg[1] = 7  # one unpacked row
  assert train_flops(cfg, seg) == pytest.approx(reference(cfg, seg), rel=1e-12)


def test_measure_scales_to_processes_and_resets():
  cfg = get_preset("tiny")
  t = Throughput(cfg, peak_flops=1e9, processes=2)
  batch = {"tokens": np.zeros((2, 32), np.int32)}
  t.add_batch(batch)
  out = t.measure(steps=1, seconds=2.0)
  assert out["tokens_per_s"] == 2 * 64 / 2.0
  assert out["mfu"] == pytest.approx(2 * reference(cfg, np.zeros((2, 32))) / 2.0 / 1e9)
  assert t.measure(steps=1, seconds=1.0)["tokens_per_s"] == 0
