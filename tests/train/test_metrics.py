import glob
import json
import logging
import math
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from cwm_jax.train import metrics as metrics_lib
from cwm_jax.train.metrics import MetricsWriter, console_line, read_metrics


def loss_at(step: int) -> float:
  """A deterministic stand-in for a training loss: distinct floats with full mantissas."""
  return float(np.random.default_rng(step).lognormal())


def tensorboard_scalars(logdir: str) -> list[tuple[str, int, float]]:
  """(tag, step, value) of every scalar in the TFRecord event files under `logdir`."""
  out = []
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        out.append((v.tag, event.step, v.simple_value))
  return out


def test_rows_round_trip_exactly(tmp_path):
  values = {"loss": 1 / 3, "lr": 3e-4, "f32": np.float32(0.1), "jax": jnp.asarray(2.5e-8, jnp.float32),
            "bf16": jnp.asarray(1.1, jnp.bfloat16), "n_tokens": np.int64(2**40 + 1),
            "nan": float("nan"), "tag": "pretrain", "skipped": True}
  with MetricsWriter(str(tmp_path), total_steps=10, tensorboard=False) as w:
    w.write(1, values)
    w.write(2, {"loss": 0.1})
  rows = read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == [1, 2]
  r = rows[0]
  assert r["loss"] == 1 / 3 and r["lr"] == 3e-4 and r["n_tokens"] == 2**40 + 1
  assert r["f32"] == float(np.float32(0.1)) and r["jax"] == float(np.float32(2.5e-8))
  assert r["bf16"] == float(jnp.asarray(1.1, jnp.bfloat16)) and math.isnan(r["nan"])
  assert r["tag"] == "pretrain" and r["skipped"] is True
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 2 and json.loads(lines[1]) == {"step": 2, "loss": 0.1}


def test_each_line_is_on_disk_right_after_write(tmp_path):
  w = MetricsWriter(str(tmp_path), total_steps=None, tensorboard=False)
  for step in range(1, 4):
    w.write(step, {"loss": loss_at(step)})
    assert [r["loss"] for r in read_metrics(str(tmp_path))] == [loss_at(s) for s in range(1, step + 1)]
  w.close()


def test_interrupted_and_resumed_run_leaves_the_same_lines(tmp_path):
  """Run A writes steps 1..10. Run B writes 1..7, is killed (no close, a
  partial line at the end), restarts from its step-5 checkpoint and writes
  6..10: its file must equal run A's byte for byte."""
  with MetricsWriter(str(tmp_path / "a"), total_steps=10, tensorboard=False) as a:
    for step in range(1, 11):
      a.write(step, {"loss": loss_at(step), "lr": step * 1e-4})
  b = MetricsWriter(str(tmp_path / "b"), total_steps=10, tensorboard=False)
  for step in range(1, 8):
    b.write(step, {"loss": loss_at(step), "lr": step * 1e-4})
  with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
    f.write('{"step": 8, "loss": 0.12')  # the line being written when killed
  del b
  resumed = MetricsWriter(str(tmp_path / "b"), total_steps=10, tensorboard=False)
  resumed.truncate_after(5)
  assert [r["step"] for r in read_metrics(str(tmp_path / "b"))] == [1, 2, 3, 4, 5]
  for step in range(6, 11):
    resumed.write(step, {"loss": loss_at(step), "lr": step * 1e-4})
  resumed.close()
  assert ((tmp_path / "b" / "metrics.jsonl").read_bytes()
          == (tmp_path / "a" / "metrics.jsonl").read_bytes())


def test_appending_after_a_partial_line_cuts_it(tmp_path, caplog):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
  with caplog.at_level(logging.WARNING):
    assert read_metrics(str(tmp_path)) == [{"step": 1, "loss": 2.0}]
  assert any("partial last line" in r.getMessage() for r in caplog.records)
  with MetricsWriter(str(tmp_path), total_steps=None, tensorboard=False) as w:
    w.write(2, {"loss": 1.5})
  assert read_metrics(str(tmp_path)) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]


def test_fresh_run_truncate_removes_everything(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
  with MetricsWriter(str(tmp_path), total_steps=None, tensorboard=False) as w:
    w.truncate_after(-1)
    w.write(1, {"loss": 3.0})
  assert read_metrics(str(tmp_path)) == [{"step": 1, "loss": 3.0}]


def test_corrupt_middle_line_is_an_error(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 3}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object"):
    read_metrics(str(tmp_path))


def test_tensorboard_scalars(tmp_path):
  with MetricsWriter(str(tmp_path), total_steps=3) as w:
    for step in (1, 2, 3):
      w.write(step, {"loss": loss_at(step), "tag": "x", "nonfinite": False})
  scalars = tensorboard_scalars(str(tmp_path / "tensorboard"))
  assert [(t, s) for t, s, _ in scalars] == [("loss", 1), ("loss", 2), ("loss", 3)]
  for (_, s, v) in scalars:
    assert v == float(np.float32(loss_at(s)))  # TensorBoard stores float32


def test_console_line_format():
  line = console_line(120, 1000, {"loss": 2.34567, "eval_loss": 2.5, "lr": 1e-3,
                                  "tokens_per_s": 12345.0}, steps_per_s=4.0)
  assert line == "step 120/1000 (12.0%) | eval_loss 2.5000, loss 2.3457 | 4 steps/s, 12.3k tok/s | ETA 3m40s"
  assert console_line(7, None, {}, None) == "step 7"


def test_console_lines_on_rate_rows_and_last_step(tmp_path, caplog):
  with caplog.at_level(logging.INFO), MetricsWriter(str(tmp_path), total_steps=4,
                                                    tensorboard=False) as w:
    w.write(1, {"loss": 4.0})
    w.write(2, {"loss": 3.0, "steps_per_s": 2.0, "tokens_per_s": 2048.0})
    w.write(3, {"loss": 2.0})
    w.write(4, {"loss": 1.0})
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
  assert lines[0] == "step 2/4 (50.0%) | loss 3.0000 | 2 steps/s, 2.05k tok/s | ETA 1s"
  assert len(lines) == 2 and lines[1].startswith("step 4/4 (100.0%) | loss 1.0000 |")


def test_console_every(tmp_path, caplog):
  with caplog.at_level(logging.INFO), MetricsWriter(str(tmp_path), total_steps=None,
                                                    tensorboard=False, console_every=3) as w:
    for step in range(1, 8):
      w.write(step, {"loss": 1.0})
  steps = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("step ")]
  assert steps == ["3", "6"]


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  with MetricsWriter(str(tmp_path / "w"), total_steps=None) as w:
    w.write(1, {"loss": 1.0})
    w.truncate_after(0)
  assert not (tmp_path / "w").exists()


def test_user_errors(tmp_path):
  w = MetricsWriter(str(tmp_path), total_steps=None, tensorboard=False)
  with pytest.raises(ValueError, match="pass the step as the first argument"):
    w.write(1, {"step": 1})
  with pytest.raises(ValueError, match=r"metric 'loss' has shape \(2,\); expected a scalar"):
    w.write(1, {"loss": np.zeros(2)})
  with pytest.raises(ValueError, match="console_every=0"):
    MetricsWriter(str(tmp_path), total_steps=None, console_every=0)
  with pytest.raises(FileNotFoundError, match="not a training workdir with metrics"):
    read_metrics(str(tmp_path / "nowhere"))
  assert metrics_lib.METRICS_FILE == "metrics.jsonl"
