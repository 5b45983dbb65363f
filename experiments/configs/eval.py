"""Evaluations: CruxEval, trace prediction, HumanEval, MBPP, MATH-500 (cwm_jax/evals).

    python -m experiments.main --config=experiments/configs/eval.py:<variant> --workdir=DIR \\
        [--config.checkpoint=DIR | --config.hf_dir=DIR] [--config.tokenizer=FILE]

Variants (an argument `variant,data_dir=D` points at the benchmark files in D):
  cruxeval   CruxEval-O and -I (direct prompting) and CruxEval-O via full traces
  trace      trace-prediction metrics on CruxEval traces and generated programs
  humaneval  pass@1 and pass@10 (n=20 samples at T=0.8)
  mbpp       pass@1 and pass@10 (n=20 samples at T=0.8)
  math500    boxed-answer accuracy
  all        everything above
  tiny       CPU: every benchmark on the first 4 problems of the dev files in
             ../shared/data, short generations; --config.checkpoint=/tmp/cwm_quickstart/...
             (the quickstart's tokenizer is the default)

Results: DIR/evals/<benchmark>.jsonl (one row per sample) and DIR/evals/summary.json.
Files are read from --config.data.<name>=PATH, else from data_dir (official file
names: HumanEval.jsonl.gz, mbpp.jsonl, cruxeval.jsonl, math500_test.jsonl);
--config.download=True fetches missing ones (pinned, sha256-checked).
"""

from __future__ import annotations

import os

import ml_collections

VARIANTS = ("cruxeval", "trace", "humaneval", "mbpp", "math500", "all", "tiny")
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED_DATA = os.path.join(os.path.dirname(_REPO), "shared", "data")
BENCHMARKS = {
    "cruxeval": "cruxeval_o,cruxeval_i,cruxeval_o_trace",
    "trace": "trace_cruxeval,trace_synthetic",
    "humaneval": "humaneval",
    "mbpp": "mbpp",
    "math500": "math500",
}
BENCHMARKS["all"] = ",".join(BENCHMARKS.values())
BENCHMARKS["tiny"] = BENCHMARKS["all"]


def _parse(arg: str | None) -> tuple[str, str]:
  parts = (arg or "cruxeval").split(",")
  variant, options = parts[0], dict(p.partition("=")[::2] for p in parts[1:] if p)
  if variant not in VARIANTS:
    raise ValueError(f"eval config variant {variant!r}: expected one of {VARIANTS}")
  if set(options) - {"data_dir"}:
    raise ValueError(f"eval config argument {arg!r}: only data_dir=DIR may follow the variant")
  return variant, options.get("data_dir", "")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, data_dir = _parse(arg)
  tiny = variant == "tiny"
  c = ml_collections.ConfigDict()
  c.stage = "eval"
  c.checkpoint = ""
  c.hf_dir = ""
  c.tokenizer = "/tmp/cwm_quickstart/data/tokenizer.model" if tiny else ""
  c.dtype = "" if tiny else "bfloat16"
  c.max_len = 2048 if tiny else 16384
  c.batch_size = 4 if tiny else 32
  c.prompt_format = "plain" if tiny else "reasoning"
  c.benchmarks = BENCHMARKS[variant]
  c.limit = 4 if tiny else 0
  c.download = False
  c.data_dir = data_dir
  dev = {"humaneval": "humaneval_dev.jsonl", "mbpp": "mbpp_dev.jsonl",
         "cruxeval": "cruxeval_dev.jsonl", "math500": "math500_dev.jsonl"}
  c.data = ml_collections.ConfigDict(
      {k: (os.path.join(SHARED_DATA, f) if tiny and not data_dir else "") for k, f in dev.items()})
  c.max_new_tokens = 64 if tiny else 8192
  sampled = variant in ("humaneval", "mbpp", "all")
  c.codegen = ml_collections.ConfigDict(dict(
      n=20 if sampled else 1, temperature=0.8 if sampled else 0.0, top_p=0.95,
      max_new_tokens=64 if tiny else (8192 if c.prompt_format == "reasoning" else 1024),
      ks="1,10" if sampled else "1", seed=0))
  c.trace = ml_collections.ConfigDict(dict(
      max_new_tokens=256 if tiny else 32768, max_frame_tokens=64 if tiny else 2048,
      frames_per_trace=3 if tiny else 0, synthetic_seed=1000, synthetic_n=4 if tiny else 500,
      synthetic_max_events=100 if tiny else 300))
  c.sandbox = ml_collections.ConfigDict(dict(workers=2, timeout_s=10.0, memory_mb=2048))
  return c
