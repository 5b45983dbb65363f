"""`run_from_config(config, workdir)`: load the model, run each benchmark, write results.

    python -m experiments.main --config=experiments/configs/eval.py:cruxeval \\
        --workdir=DIR --config.checkpoint=CKPT

Writes one JSON line per sample to `DIR/evals/<benchmark>.jsonl` and the summaries
to `DIR/evals/summary.json` (also returned). Each benchmark's summary says how
many problems it read and, where some could not be used (a CruxEval record the
tracer could not trace, a generated program that failed), how many and why.
"""

from __future__ import annotations

import collections
import json
import os
import time

from absl import logging

from cwm_jax.evals import cruxeval, data, humaneval, math500, mbpp
from cwm_jax.evals.config import BENCHMARKS, EvalConfig, eval_config
from cwm_jax.evals.model import Completer, SamplerCompleter
from cwm_jax.evals.trace_metrics import evaluate_traces
from cwm_jax.sandbox import SandboxConfig, SandboxPool
from cwm_jax.train.config import ConfigError


def _problems(cfg: EvalConfig, dataset: str) -> list:
  path = cfg.data_path(dataset)
  if not os.path.isfile(path):
    if not cfg.download:
      raise ConfigError(f"config.data.{dataset}: {path!r} does not exist; give the path of the "
                        f"official file or set config.download=True (needs a network)")
    path = data.download(dataset, cfg.data_dir or os.path.dirname(path))
  try:
    problems = data.load_benchmark(dataset, path)
  except data.BenchmarkFileError as e:
    raise ConfigError(f"config.data.{dataset}: {e}") from None
  return problems[:cfg.limit] if cfg.limit else problems


def load_completer(cfg: EvalConfig) -> SamplerCompleter:
  """The model named by `checkpoint` or `hf_dir`, behind a SamplerCompleter."""
  from cwm_jax.tokenizer import load_tokenizer  # pylint: disable=import-outside-toplevel
  if not (cfg.checkpoint or cfg.hf_dir):
    raise ConfigError("config.checkpoint or config.hf_dir: give the model to evaluate")
  from cwm_jax.inference.loading import tokenizer_path_for  # pylint: disable=import-outside-toplevel
  try:
    tokenizer_path = cfg.tokenizer or tokenizer_path_for(cfg.checkpoint or None, cfg.hf_dir or None)
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(f"config.tokenizer: {e}") from None
  if not os.path.exists(tokenizer_path):
    raise ConfigError(f"config.tokenizer={tokenizer_path!r}: expected the tokenizer file the "
                      "model was trained with")
  tokenizer = load_tokenizer(tokenizer_path)
  if cfg.checkpoint:
    from cwm_jax.train.checkpoint import load_params  # pylint: disable=import-outside-toplevel
    model_cfg, params = load_params(cfg.checkpoint, dtype=cfg.dtype)
  else:
    from cwm_jax.convert import load_hf_params  # pylint: disable=import-outside-toplevel
    model_cfg, params = load_hf_params(cfg.hf_dir, dtype=cfg.dtype)
  return SamplerCompleter.from_params(model_cfg, params, tokenizer,
                                      max_len=min(cfg.max_len, model_cfg.max_seq_len),
                                      batch_size=cfg.batch_size)


def _traced(records: list[dict], max_events: int | None = None):
  """(traces, ids, dropped Counter) of function-level records, traced in the sandbox."""
  from data_pipelines.traces import executors  # pylint: disable=import-outside-toplevel
  from data_pipelines.traces.sources import cruxeval_requests  # pylint: disable=import-outside-toplevel
  from data_pipelines.traces.trace import TraceLimits, trace_requests  # pylint: disable=import-outside-toplevel
  limits = TraceLimits(max_events=max_events) if max_events else TraceLimits()
  results = trace_requests(cruxeval_requests(records), limits=limits,
                           executor=executors.sandbox_executor, batch_size=50, num_workers=2)
  traces, ids, dropped = [], [], collections.Counter()
  for record, r in zip(records, results):
    if not r.ok:
      dropped[f"{r.status}/{r.kind}"] += 1
    elif r.exception is not None:
      dropped["raised"] += 1
    else:
      traces.append(r.trace)
      ids.append(str(record["id"]))
  return traces, ids, dropped


def run_benchmark(name: str, completer: Completer, cfg: EvalConfig, pool) -> tuple[dict, list]:
  """(summary, rows) of one benchmark."""
  fmt, ex = cfg.prompt_format, cfg.execution
  if name == "humaneval":
    return humaneval.evaluate(completer, _problems(cfg, "humaneval"), fmt, cfg.codegen, ex,
                              executor=pool)
  if name == "mbpp":
    return mbpp.evaluate(completer, _problems(cfg, "mbpp"), fmt, cfg.codegen, ex, executor=pool)
  if name in ("cruxeval_o", "cruxeval_i"):
    mode = "output" if name == "cruxeval_o" else "input"
    return cruxeval.evaluate_direct(completer, _problems(cfg, "cruxeval"), mode, fmt,
                                    max_new_tokens=cfg.max_new_tokens, execution=ex,
                                    executor=pool)
  if name == "cruxeval_o_trace":
    return cruxeval.evaluate_output_via_trace(completer, _problems(cfg, "cruxeval"),
                                              max_new_tokens=cfg.trace.max_new_tokens,
                                              execution=ex, executor=pool)
  if name == "math500":
    return math500.evaluate(completer, _problems(cfg, "math500"), fmt,
                            max_new_tokens=cfg.max_new_tokens)
  if name in ("trace_cruxeval", "trace_synthetic"):
    if name == "trace_cruxeval":
      records = [{"id": p.id, "code": p.code, "input": p.input}
                 for p in _problems(cfg, "cruxeval")]
      traces, ids, dropped = _traced(records)
    else:
      from data_pipelines.programs.generate import generate_programs  # pylint: disable=import-outside-toplevel
      s = cfg.synthetic
      records = list(generate_programs(seed=s.seed, n=s.n))
      traces, ids, dropped = _traced(records, s.max_events)
    summary, rows = evaluate_traces(completer, traces, config=cfg.trace, ids=ids)
    return {**summary, "programs": len(records), "dropped": dict(sorted(dropped.items()))}, rows
  raise ValueError(f"unknown benchmark {name!r}; expected one of {tuple(BENCHMARKS)}")


def _write_json(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True, default=str)
    f.write("\n")
  os.replace(tmp, path)


def run_from_config(config, workdir: str, *, completer: Completer | None = None) -> dict:
  """Validates `config` (ConfigDict), runs its benchmarks and returns the summary.

  `completer` replaces the model named in the config (stored generations, tests).
  """
  cfg = eval_config(config)
  out_dir = os.path.join(workdir, "evals")
  os.makedirs(out_dir, exist_ok=True)
  if completer is None:
    completer = load_completer(cfg)
  summary: dict = {"prompt_format": cfg.prompt_format, "model": cfg.checkpoint or cfg.hf_dir or
                   type(completer).__name__}
  needs_sandbox = any(b != "math500" for b in cfg.benchmarks)
  pool = SandboxPool(cfg.execution.workers, SandboxConfig()) if needs_sandbox else None
  try:
    for name in cfg.benchmarks:
      start = time.time()
      too_long = getattr(completer, "prompts_too_long", None)
      result, rows = run_benchmark(name, completer, cfg, pool)
      if too_long is not None:
        result["prompts_too_long"] = completer.prompts_too_long - too_long
      result["seconds"] = round(time.time() - start, 1)
      with open(os.path.join(out_dir, f"{name}.jsonl"), "w", encoding="utf-8") as f:
        for row in rows:
          f.write(json.dumps(row, default=str) + "\n")
      summary[name] = result
      logging.info("eval %s: %s", name, json.dumps(result, default=str))
      _write_json(os.path.join(out_dir, "summary.json"), summary)
  finally:
    if pool is not None:
      pool.close()
  return summary
