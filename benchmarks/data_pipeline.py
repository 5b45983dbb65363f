"""Packed tokens/s of `build_train_iterator` with 0 and with N grain worker processes.

    python -m benchmarks.data_pipeline                       # 0 vs 2 workers
    python -m benchmarks.data_pipeline --workers=4 --batches=400 --seq_len=2048

Generates a mixture (traces in ArrayRecord, code-like text and chats in JSONL) in a
temp dir, trains the toy sentencepiece tokenizer, then times `--batches` batches after
one warm-up batch (worker start-up excluded). Tokens/s counts non-padding tokens.
The ratio (N workers / 0 workers) is the number to read; absolute rates on shared
machines are noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import tempfile
import textwrap
import time

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from cwm_jax.tokenizer.toy import build_toy_sentencepiece
from data_pipelines.pipeline import PipelineConfig, SourceConfig, build_train_iterator
from data_pipelines.traces.format import format_trace
from data_pipelines.traces.frames import CallFrame, LineFrame, ReturnFrame, Trace


def _trace(i: int, n: int) -> Trace:
  ctx = (f"def main():  # << START_OF_TRACE\n  total = 0\n  for k in range({n}):\n"
         f"    total += k * {i}\n  return total\n")
  frames, total = [CallFrame({}, "def main():\n"), LineFrame({}, "  total = 0\n")], 0
  for k in range(n):
    frames.append(LineFrame({"total": repr(total)} | ({"k": repr(k - 1)} if k else {}),
                            f"  for k in range({n}):\n"))
    frames.append(LineFrame({"total": repr(total), "k": repr(k)}, f"    total += k * {i}\n"))
    total += k * i
  frames.append(ReturnFrame("  return total\n", repr(total)))
  return Trace(ctx, tuple(frames))


def write_data(directory: str, n: int) -> dict[str, str]:
  rng = np.random.default_rng(0)
  code = inspect.getsource(textwrap)
  paths = {k: os.path.join(directory, name) for k, name in
           [("trace", "traces.array_record"), ("text", "code.jsonl"), ("chat", "chat.jsonl")]}
  writer = ArrayRecordWriter(paths["trace"], "group_size:1")
  for i in range(n):
    writer.write(json.dumps({"trace_text": format_trace(_trace(i, int(rng.integers(1, 20))))}).encode())
  writer.close()
  with open(paths["text"], "w") as f:
    for _ in range(n):
      start = int(rng.integers(0, len(code) - 4000))
      f.write(json.dumps({"text": code[start:start + int(rng.integers(200, 4000))]}) + "\n")
  with open(paths["chat"], "w") as f:
    for i in range(n):
      f.write(json.dumps({"messages": [
          {"role": "user", "content": f"Explain snippet {i}:\n" + code[i * 7:i * 7 + 300]},
          {"role": "assistant", "content": "It wraps text. " * int(rng.integers(5, 60))}]}) + "\n")
  return paths


def tokens_per_s(config: PipelineConfig, batches: int) -> tuple[float, float]:
  """(non-padding tokens per second, fraction of row slots holding a token)."""
  with build_train_iterator(config) as it:
    next(it)  # warm-up: worker start-up, tokenizer load
    t0, tokens = time.perf_counter(), 0
    for _ in range(batches):
      tokens += int((next(it)["segment_ids"] > 0).sum())
    rate = tokens / (time.perf_counter() - t0)
  return rate, tokens / (batches * config.batch_size * config.seq_len)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--batches", type=int, default=200)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=1024)
  parser.add_argument("--records", type=int, default=2000)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as d:
    paths = write_data(d, args.records)
    config = PipelineConfig(
        sources=(SourceConfig("traces", paths["trace"], "trace", 0.3),
                 SourceConfig("code", paths["text"], "text", 0.4),
                 SourceConfig("chat", paths["chat"], "chat", 0.3)),
        tokenizer_path=build_toy_sentencepiece(d), seq_len=args.seq_len,
        batch_size=args.batch_size, shard_index=0, shard_count=1)
    base, fill = tokens_per_s(config, args.batches)
    multi, _ = tokens_per_s(dataclasses.replace(config, num_workers=args.workers), args.batches)
  print(f"packed tokens/s, B={args.batch_size} T={args.seq_len}, {args.batches} batches, "
        f"{os.cpu_count()} CPUs; rows {fill:.1%} full")
  print(f"  0 workers:  {base:12,.0f}")
  print(f"  {args.workers} workers:  {multi:12,.0f}")
  print(f"  ratio ({args.workers} / 0): {multi / base:.2f}x")


if __name__ == "__main__":
  main()
