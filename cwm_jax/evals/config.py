"""The eval config: an ml_collections ConfigDict validated once into a frozen `EvalConfig`.

`experiments/configs/eval.py` writes the ConfigDict; `eval_config` checks every key
(unknown keys, wrong types and bad values are a `ConfigError` naming the key) and
fills what is left out with the defaults of `FIELDS`. Nothing downstream sees the
ConfigDict.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from cwm_jax.evals.codegen import CodegenSampling
from cwm_jax.evals.data import SOURCES
from cwm_jax.evals.execution import ExecutionConfig
from cwm_jax.evals.prompting import PROMPT_FORMATS
from cwm_jax.evals.trace_metrics import TraceEvalConfig
from cwm_jax.train.config import ConfigError

# What each benchmark reads (trace_synthetic makes its own programs).
BENCHMARKS = {
    "humaneval": "humaneval", "mbpp": "mbpp", "cruxeval_o": "cruxeval",
    "cruxeval_i": "cruxeval", "cruxeval_o_trace": "cruxeval", "trace_cruxeval": "cruxeval",
    "trace_synthetic": None, "math500": "math500",
}

# key -> default; nested dicts are sub-configs. Types are the defaults' types.
FIELDS: dict[str, Any] = {
    "stage": "eval",
    "checkpoint": "",           # training workdir / step dir / save_orbax dir
    "hf_dir": "",               # or an HF CWM checkpoint directory
    "tokenizer": "",            # "" = HF_DIR/tokenizer.model
    "dtype": "",                # "" = as stored; e.g. "bfloat16"
    "max_len": 8192,            # KV cache length (prompt + generation)
    "batch_size": 8,
    "prompt_format": "chat",    # plain | chat | reasoning
    "benchmarks": "cruxeval_o",  # comma-separated keys of BENCHMARKS
    "limit": 0,                 # first N problems of each benchmark (0 = all)
    "download": False,          # fetch missing official files into data_dir
    "data_dir": "",
    "data": {"humaneval": "", "mbpp": "", "cruxeval": "", "math500": ""},  # "" = data_dir/<file>
    "max_new_tokens": 1024,     # CruxEval direct, MATH-500
    "codegen": {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 512, "ks": "1",
                "seed": 0},
    "trace": {"max_new_tokens": 4096, "max_frame_tokens": 512, "frames_per_trace": 0,
              "synthetic_seed": 1000, "synthetic_n": 100, "synthetic_max_events": 300},
    "sandbox": {"workers": 2, "timeout_s": 10.0, "memory_mb": 2048},
}


@dataclasses.dataclass(frozen=True)
class SyntheticTraces:
  """Generated function-level programs (data_pipelines.programs) to trace and evaluate."""
  seed: int = 1000
  n: int = 100
  max_events: int = 300


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  checkpoint: str
  hf_dir: str
  tokenizer: str
  dtype: str | None
  max_len: int
  batch_size: int
  prompt_format: str
  benchmarks: tuple[str, ...]
  limit: int | None
  download: bool
  data_dir: str
  data: tuple[tuple[str, str], ...]  # dataset -> path (resolved)
  max_new_tokens: int
  codegen: CodegenSampling
  trace: TraceEvalConfig
  synthetic: SyntheticTraces
  execution: ExecutionConfig

  def data_path(self, dataset: str) -> str:
    return dict(self.data)[dataset]


def _check_types(values: dict, schema: dict, prefix: str) -> dict:
  unknown = sorted(set(values) - set(schema))
  if unknown:
    raise ConfigError(f"config.{prefix}{unknown[0]}: unknown key; expected one of "
                      f"{sorted(schema)}")
  out = {}
  for key, default in schema.items():
    value = values.get(key, default)
    name = f"config.{prefix}{key}"
    if isinstance(default, dict):
      if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a group of keys {sorted(default)}, got {value!r}")
      out[key] = _check_types(value, default, f"{prefix}{key}.")
      continue
    if isinstance(default, bool):
      ok = isinstance(value, bool)
    elif isinstance(default, int):
      ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
      ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
      ok = isinstance(value, str)
    if not ok:
      raise ConfigError(f"{name}={value!r}: expected {type(default).__name__}")
    out[key] = value
  return out


def _int_list(text: str, name: str) -> tuple[int, ...]:
  try:
    return tuple(int(x) for x in str(text).split(",") if x.strip())
  except ValueError:
    raise ConfigError(f"{name}={text!r}: expected comma-separated ints, e.g. '1,10'") from None


def eval_config(config) -> EvalConfig:
  """Validates a ConfigDict (or dict) into an EvalConfig; ConfigError names the bad key."""
  raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  v = _check_types(raw, FIELDS, "")
  if v["stage"] != "eval":
    raise ConfigError(f"config.stage={v['stage']!r}: expected 'eval'")
  if v["checkpoint"] and v["hf_dir"]:
    raise ConfigError("config.checkpoint and config.hf_dir are both set; give one model")
  if v["prompt_format"] not in PROMPT_FORMATS:
    raise ConfigError(f"config.prompt_format={v['prompt_format']!r}: expected one of "
                      f"{PROMPT_FORMATS}")
  benchmarks = tuple(b.strip() for b in v["benchmarks"].split(",") if b.strip())
  for b in benchmarks:
    if b not in BENCHMARKS:
      raise ConfigError(f"config.benchmarks has {b!r}: expected comma-separated names from "
                        f"{tuple(BENCHMARKS)}")
  if not benchmarks or len(set(benchmarks)) != len(benchmarks):
    raise ConfigError(f"config.benchmarks={v['benchmarks']!r}: expected distinct names")
  for key in ("max_len", "batch_size", "max_new_tokens"):
    if v[key] < 1:
      raise ConfigError(f"config.{key}={v[key]!r}: expected a positive int")
  if v["limit"] < 0:
    raise ConfigError(f"config.limit={v['limit']!r}: expected >= 0 (0 = every problem)")
  data = {}
  for dataset, path in v["data"].items():
    if not path:
      path = os.path.join(v["data_dir"], SOURCES[dataset].filename) if v["data_dir"] else ""
    needed = any(BENCHMARKS[b] == dataset for b in benchmarks)
    if needed and not path:
      raise ConfigError(f"config.data.{dataset} is empty and config.data_dir is not set: give the "
                        f"path of the {dataset} JSONL file")
    data[dataset] = path
  cg, tr, sb = v["codegen"], v["trace"], v["sandbox"]
  try:
    codegen = CodegenSampling(n=cg["n"], temperature=float(cg["temperature"]),
                              top_p=float(cg["top_p"]), max_new_tokens=cg["max_new_tokens"],
                              ks=_int_list(cg["ks"], "config.codegen.ks"), seed=cg["seed"])
    trace = TraceEvalConfig(max_new_tokens=tr["max_new_tokens"],
                            max_frame_tokens=tr["max_frame_tokens"],
                            frames_per_trace=tr["frames_per_trace"] or None)
    synthetic = SyntheticTraces(tr["synthetic_seed"], tr["synthetic_n"],
                                tr["synthetic_max_events"])
    execution = ExecutionConfig(timeout_s=float(sb["timeout_s"]), memory_mb=sb["memory_mb"],
                                workers=sb["workers"])
  except ValueError as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"config: {e}") from None
  if synthetic.n < 1 or synthetic.max_events < 1:
    raise ConfigError("config.trace.synthetic_n and synthetic_max_events: expected positive ints")
  return EvalConfig(
      checkpoint=v["checkpoint"], hf_dir=v["hf_dir"], tokenizer=v["tokenizer"],
      dtype=v["dtype"] or None, max_len=v["max_len"], batch_size=v["batch_size"],
      prompt_format=v["prompt_format"], benchmarks=benchmarks, limit=v["limit"] or None,
      download=v["download"], data_dir=v["data_dir"], data=tuple(sorted(data.items())),
      max_new_tokens=v["max_new_tokens"], codegen=codegen, trace=trace, synthetic=synthetic,
      execution=execution)
