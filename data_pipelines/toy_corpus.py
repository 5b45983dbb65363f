"""A small world-model corpus made on the spot, for CPU runs of the whole pipeline.

    python -m data_pipelines.toy_corpus --out=/tmp/cwm_quickstart/data [--programs=3000]

Synthetic programs (data_pipelines.programs) are traced in the sandbox; the ones
that trace cleanly are split by a hash of their id into train and held-out sets,
and written as the files the `tiny` experiment configs read:

    code.jsonl / code_heldout.jsonl      {"text": program source}         (pretrain)
    traces.jsonl / traces_heldout.jsonl  {"trace_text", "status", "id"}   (midtrain, evals)
    chat.jsonl / chat_heldout.jsonl      {"messages": [...]}              (SFT: predict the
                                          return value, reasoning = the executed lines)
    tokenizer.model                      sentencepiece (CWM special tokens) trained on
                                          the train split's code and traces
    manifest.json                        counts, including programs that failed to trace

Nothing is downloaded; everything depends only on the seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import sys
import time

from cwm_jax.tokenizer import train_sentencepiece
from data_pipelines.programs.generate import generate_programs
from data_pipelines.traces import tracer_program as tp
from data_pipelines.traces.format import format_trace
from data_pipelines.traces.frames import LineFrame, Trace
from data_pipelines.traces.sources import TraceRequest, cruxeval_context
from data_pipelines.traces.trace import TraceLimits, trace_requests

FILES = ("code", "traces", "chat")


@dataclasses.dataclass(frozen=True)
class ToyCorpusConfig:
  programs: int = 3000
  heldout_fraction: float = 0.05
  seed: int = 0
  max_depth: int = 0
  max_helpers: int = 0
  max_events: int = 60        # longer traces are dropped (counted as too_long)
  vocab_size: int = 2048
  num_workers: int = 2


def is_heldout(program_id: str, fraction: float) -> bool:
  """A stable split: the same program is held out whatever the corpus size."""
  h = int.from_bytes(hashlib.sha256(program_id.encode()).digest()[:8], "little")
  return h / 2**64 < fraction


def chat_record(code: str, call: str, trace: Trace) -> dict:
  """An SFT dialog: the user asks for the return value of `call`; the assistant
  reasons through the executed lines and answers with the value's repr."""
  steps = [f.source_line.strip() for f in trace.frames if isinstance(f, LineFrame)][:12]
  reasoning = "Executing:\n" + "\n".join(steps)
  return {"messages": [
      {"role": "user", "content": f"```python\n{code}\n```\nWhat does `{call}` return?"},
      {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n{trace.return_value}"}]}


def _write_jsonl(path: str, records) -> int:
  tmp = path + ".tmp"
  n = 0
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
      n += 1
  os.replace(tmp, path)
  return n


def build_toy_corpus(out_dir: str, config: ToyCorpusConfig = ToyCorpusConfig(),
                     log=print) -> dict:
  """Writes the corpus into `out_dir` (skipped when its manifest matches `config`)."""
  os.makedirs(out_dir, exist_ok=True)
  manifest_path = os.path.join(out_dir, "manifest.json")
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      manifest = json.load(f)
    if (manifest.get("config") == dataclasses.asdict(config) and
        manifest.get("trace_format") == tp.TRACE_FORMAT_VERSION):
      log(f"toy corpus: {out_dir} is up to date ({manifest['counts']})")
      return manifest
  t0 = time.time()
  programs = list(generate_programs(config.seed, config.programs, max_depth=config.max_depth,
                                    max_helpers=config.max_helpers))
  requests = [TraceRequest(cruxeval_context(p["code"], p["input"]), id=p["id"]) for p in programs]
  limits = TraceLimits(max_events=config.max_events)
  results = trace_requests(requests, limits=limits, num_workers=config.num_workers)
  status_counts: dict[str, int] = {}
  splits: dict[str, dict[str, list]] = {"train": {k: [] for k in FILES},
                                        "heldout": {k: [] for k in FILES}}
  for program, result in zip(programs, results):
    status_counts[result.status] = status_counts.get(result.status, 0) + 1
    if not result.ok:
      continue
    split = splits["heldout" if is_heldout(program["id"], config.heldout_fraction) else "train"]
    call = f"f({program['input']})"
    split["code"].append({"text": program["code"] + f"\n\nprint({call})\n", "id": program["id"]})
    split["traces"].append({"trace_text": format_trace(result.trace), "status": "ok",
                            "id": program["id"]})
    split["chat"].append({**chat_record(program["code"], call, result.trace), "id": program["id"]})
  counts = {"programs": len(programs), "trace_status": status_counts}
  for split, files in splits.items():
    for name, records in files.items():
      suffix = "" if split == "train" else "_heldout"
      counts[f"{name}{suffix}"] = _write_jsonl(os.path.join(out_dir, f"{name}{suffix}.jsonl"),
                                               records)
  log(f"toy corpus: traced {len(programs)} programs in {time.time() - t0:.1f}s: {status_counts}")
  corpus_txt = os.path.join(out_dir, "tokenizer_corpus.txt")
  with open(corpus_txt, "w", encoding="utf-8") as f:
    for r in splits["train"]["code"]:
      f.write(r["text"] + "\n")
    for r in splits["train"]["traces"]:
      f.write(r["trace_text"] + "\n")
  train_sentencepiece([pathlib.Path(corpus_txt)], os.path.join(out_dir, "tokenizer"),
                      config.vocab_size)
  manifest = {"config": dataclasses.asdict(config), "trace_format": tp.TRACE_FORMAT_VERSION,
              "counts": counts,
              "tokenizer": os.path.join(out_dir, "tokenizer.model"),
              "seconds": round(time.time() - t0, 1)}
  with open(manifest_path + ".tmp", "w") as f:
    json.dump(manifest, f, indent=2)
  os.replace(manifest_path + ".tmp", manifest_path)
  log(f"toy corpus: {counts} in {manifest['seconds']}s -> {out_dir}")
  return manifest


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  for field in dataclasses.fields(ToyCorpusConfig):
    parser.add_argument(f"--{field.name}", type=type(field.default), default=field.default)
  args = parser.parse_args(argv)
  config = ToyCorpusConfig(**{f.name: getattr(args, f.name)
                              for f in dataclasses.fields(ToyCorpusConfig)})
  build_toy_corpus(args.out, config)
  return 0


if __name__ == "__main__":
  sys.exit(main())
