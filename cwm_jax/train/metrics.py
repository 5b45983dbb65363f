"""Training metrics: `WORKDIR/metrics.jsonl`, TensorBoard and a console line.

    writer = MetricsWriter(workdir, total_steps=10_000)
    writer.truncate_after(restored_step)        # on resume: drop lines of the lost steps
    writer.write(step, {"loss": 2.31, "lr": 3e-4, "tokens_per_s": 1.2e5})
    rows = read_metrics(workdir)                # [{"step": 1, "loss": ...}, ...]

`metrics.jsonl` is the record of a run: one JSON object per written step,
always with `step`, floats written exactly (Python's shortest round-trip
repr; NaN/Infinity as Python's json module writes them), flushed after
every line so a `kill -9` loses at most the line being written. After a
resume the loop cuts the file back to the restored step, so an interrupted
and resumed run leaves the same lines as an uninterrupted one.
TensorBoard scalars go to `WORKDIR/tensorboard/` (tensorboardX); the console
line goes through absl logging. Only process 0 writes anything.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Optional

import jax
import numpy as np
from absl import logging

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _plain(value: Any, key: str) -> Any:
  """numpy / jax scalars -> Python numbers (exactly), others unchanged."""
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    if np.size(value) != 1:
      raise ValueError(f"MetricsWriter.write: metric {key!r} has shape {np.shape(value)}; "
                       "expected a scalar.")
    return np.asarray(value).item()
  return value


def _parse_lines(path: str) -> list[dict]:
  """The objects of a metrics file; a partial last line (a write cut short by
  a kill) is dropped, any other unreadable line is an error."""
  with open(path) as f:
    lines = f.read().split("\n")
  rows = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError as e:
      if i == len(lines) - 1:  # no newline after it: the write was interrupted
        logging.warning("%s: dropping a partial last line (%d bytes).", path, len(line))
        continue
      raise ValueError(f"{path}:{i + 1}: not a JSON object ({e}).") from None
    if not isinstance(row, dict) or "step" not in row:
      raise ValueError(f"{path}:{i + 1}: expected a JSON object with 'step', got {line[:80]!r}.")
    rows.append(row)
  return rows


def read_metrics(workdir: str) -> list[dict]:
  """All rows of `WORKDIR/metrics.jsonl`, in file order."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {workdir!r} is not a training workdir "
                            "with metrics (expected WORKDIR/metrics.jsonl).")
  return _parse_lines(path)


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _si(x: float) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(x) >= scale:
      return f"{x / scale:.3g}{unit}"
  return f"{x:.3g}"


def console_line(step: int, total_steps: Optional[int], row: dict, steps_per_s: Optional[float]) -> str:
  """'step 120/1000 (12.0%) | loss 2.3456 | 3.2 steps/s, 12.3k tok/s | ETA 4m35s'."""
  parts = [f"step {step}/{total_steps} ({100 * step / total_steps:.1f}%)" if total_steps
           else f"step {step}"]
  losses = [f"{k} {row[k]:.4f}" for k in sorted(row)
            if (k == "loss" or "eval" in k and "loss" in k) and isinstance(row[k], (int, float))]
  if losses:
    parts.append(", ".join(losses))
  if steps_per_s:
    rate = f"{steps_per_s:.3g} steps/s"
    if isinstance(row.get("tokens_per_s"), (int, float)):
      rate += f", {_si(row['tokens_per_s'])} tok/s"
    parts.append(rate)
    if total_steps:
      parts.append(f"ETA {_duration(max(total_steps - step, 0) / steps_per_s)}")
  return " | ".join(parts)


class MetricsWriter:
  """Appends per-step metrics to the workdir's JSONL file, TensorBoard and the console.

  console_every: None prints a console line for each row that carries a
  measured rate (`steps_per_s` / `tokens_per_s`, as the loop adds on its log
  steps) or an eval metric, and for the last step; N also prints every N-th
  step. Rates missing from the row are measured between console lines.
  """

  def __init__(self, workdir: str, *, total_steps: Optional[int], tensorboard: bool = True,
               console_every: Optional[int] = None):
    if console_every is not None and (not isinstance(console_every, int) or console_every <= 0):
      raise ValueError(f"MetricsWriter: console_every={console_every!r}, expected None or a "
                       "positive integer.")
    self.workdir = workdir
    self.path = os.path.join(workdir, METRICS_FILE)
    self.total_steps = total_steps
    self.console_every = console_every
    self._tensorboard = tensorboard
    self._active = jax.process_index() == 0
    self._file = None
    self._tb = None
    self._purge_step: Optional[int] = None
    self._last_console: Optional[tuple[float, int]] = None

  def _open(self):
    if self._file is None:
      os.makedirs(self.workdir, exist_ok=True)
      if os.path.exists(self.path):
        with open(self.path, "rb+") as f:  # cut a partial last line before appending
          data = f.read()
          if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
      self._file = open(self.path, "a")
    return self._file

  def _board(self):
    if self._tb is None and self._tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(self.workdir, TENSORBOARD_DIR),
                               purge_step=self._purge_step)
    return self._tb

  def write(self, step: int, metrics: dict) -> None:
    """One JSON line {"step": step, **metrics}, TensorBoard scalars, maybe a console line."""
    if "step" in metrics:
      raise ValueError("MetricsWriter.write: pass the step as the first argument, not as a metric.")
    if not self._active:
      return
    step = int(step)
    row = {"step": step, **{k: _plain(v, k) for k, v in metrics.items()}}
    try:
      line = json.dumps(row)
    except TypeError as e:
      raise ValueError(f"MetricsWriter.write: step {step} metrics are not JSON-serialisable "
                       f"({e}).") from None
    f = self._open()
    f.write(line + "\n")
    f.flush()
    board = self._board()
    if board is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
          board.add_scalar(k, v, step)
    self._console(step, row)

  def _console(self, step: int, row: dict) -> None:
    now = time.perf_counter()
    if self._last_console is None:
      self._last_console = (now, step)
    has_rate = any(k in row for k in ("steps_per_s", "tokens_per_s"))
    has_eval = any("eval" in k for k in row)
    due = (has_rate or has_eval or step == self.total_steps
           or (self.console_every and step % self.console_every == 0))
    if not due:
      return
    t0, s0 = self._last_console
    rate = row.get("steps_per_s")
    if not isinstance(rate, (int, float)):
      rate = (step - s0) / (now - t0) if now > t0 and step > s0 else None
    logging.info("%s", console_line(step, self.total_steps, row, rate))
    self._last_console = (now, step)

  def truncate_after(self, step: int) -> None:
    """Keeps only lines with step <= `step` (atomic rewrite); the resumed run
    then appends the lines of the steps that were lost. TensorBoard events
    after `step` are purged when the event writer opens."""
    if not self._active:
      return
    self.flush()
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    self._purge_step = int(step) + 1
    self._last_console = None
    if not os.path.exists(self.path):
      return
    kept = [row for row in _parse_lines(self.path) if row["step"] <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(row) + "\n" for row in kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
