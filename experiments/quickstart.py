"""The whole CWM recipe at toy scale on a CPU, in about ten minutes, with no downloads:

    python -m experiments.quickstart --workdir=/tmp/cwm_quickstart

1. make a world-model corpus: seeded synthetic Python programs, traced in the
   bubblewrap sandbox, split into train and held-out programs; train a
   sentencepiece tokenizer with CWM's special tokens (data_pipelines.toy_corpus);
2. pretrain the `tiny` model on the programs' plain source
   (experiments/configs/pretrain.py:tiny);
3. midtrain it on a trace + code mix at 4x the context with RoPE scaling on,
   continuing the optimizer state and learning-rate schedule
   (experiments/configs/midtrain.py:tiny);
4. evaluate trace prediction on held-out programs (cwm_jax.evals.trace_metrics:
   valid trace format, next-frame state/action exact match, output accuracy) for
   the untrained model, the pretrained one and the midtrained one, print a table,
   and plot the loss curves.

Each stage is the same code path as `python -m experiments.main` (re-running
resumes); flags shrink or grow the run, e.g. `--pretrain_steps=600`.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging

from cwm_jax.host_memory import use_tcmalloc

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/cwm_quickstart", "Everything goes here.")
_PROGRAMS = flags.DEFINE_integer("programs", 3000, "Synthetic programs to generate and trace.")
_VOCAB = flags.DEFINE_integer("vocab_size", 2048, "Tokenizer ids (at most the model's 2048).")
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", None, "Default: the tiny config's.")
_MIDTRAIN_STEPS = flags.DEFINE_integer("midtrain_steps", None, "Default: the tiny config's.")
_EVAL_PROGRAMS = flags.DEFINE_integer("eval_programs", 32, "Held-out programs to evaluate on.")
_FRAMES_PER_TRACE = flags.DEFINE_integer("frames_per_trace", 4,
                                         "Teacher-forced frames scored per held-out trace.")


def stage_config(stage: str, data_dir: str, steps, **overrides):
  import importlib
  config = importlib.import_module(f"experiments.configs.{stage}").get_config(
      f"tiny,data_dir={data_dir}")
  if steps is not None:
    config.train.steps = steps
  for key, value in overrides.items():
    config[key] = value
  return config


def run_stage(stage: str, data_dir: str, workdir: str, steps, **overrides) -> dict:
  from cwm_jax.train.config import experiment_config
  from cwm_jax.train.loop import train
  cfg = experiment_config(stage_config(stage, data_dir, steps, **overrides))
  t0 = time.time()
  summary = train(cfg, workdir)
  summary["seconds"] = round(time.time() - t0, 1)
  logging.info("%s done: %s", stage, summary)
  return summary


def evaluate(name: str, model_cfg, params, tokenizer, traces, frames_per_trace: int) -> dict:
  from cwm_jax.evals.model import SamplerCompleter
  from cwm_jax.evals.trace_metrics import TraceEvalConfig, evaluate_traces
  # One batch for all programs: CPU decoding is bound by per-step overhead, not batch size.
  completer = SamplerCompleter.from_params(model_cfg, params, tokenizer, max_len=2048,
                                           batch_size=64)
  t0 = time.time()
  summary, rows = evaluate_traces(completer, traces, config=TraceEvalConfig(
      max_new_tokens=768, max_frame_tokens=96, frames_per_trace=frames_per_trace))
  summary["seconds"] = round(time.time() - t0, 1)
  logging.info("eval %s: %s", name, summary)
  return summary, rows


def heldout_traces(data_dir: str, n: int):
  from data_pipelines.traces.parse import parse_trace
  with open(os.path.join(data_dir, "traces_heldout.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [parse_trace(r["trace_text"]) for r in records[:n]]


METRICS = (("valid_format", "valid trace format"), ("state_exact_match", "next-frame state EM"),
           ("action_exact_match", "next-frame action EM"), ("key_value_match", "locals key+value"),
           ("output_accuracy", "output accuracy"))


def table(results: dict[str, dict]) -> str:
  names = list(results)
  lines = [f"{'metric':<24}" + "".join(f"{n:>12}" for n in names)]
  for key, label in METRICS:
    cells = []
    for n in names:
      v = results[n].get(key)
      cells.append(f"{'-' if v is None else f'{100 * v:.1f}%':>12}")
    lines.append(f"{label:<24}" + "".join(cells))
  return "\n".join(lines)


def use_cpu_cores() -> None:
  """One XLA host device per core (up to 2), before JAX starts: the tiny model's steps
  are too small for XLA to spread over cores, data parallelism over devices is not."""
  n = min(os.cpu_count() or 1, 2)
  flags_env = os.environ.get("XLA_FLAGS", "")
  if n > 1 and "xla_force_host_platform_device_count" not in flags_env:
    os.environ["XLA_FLAGS"] = f"{flags_env} --xla_force_host_platform_device_count={n}".strip()


def main(argv) -> None:
  del argv
  use_tcmalloc()  # may re-execute this command, so first (cwm_jax/host_memory.py)
  use_cpu_cores()
  import jax
  from cwm_jax.model.params import init_params
  from cwm_jax.tokenizer import load_tokenizer
  from cwm_jax.train.checkpoint import load_params
  from cwm_jax.train.config import experiment_config
  from data_pipelines.toy_corpus import ToyCorpusConfig, build_toy_corpus
  from experiments.plot import plot_metrics

  from cwm_jax.train.logs import quiet_library_logs
  quiet_library_logs()
  t_start = time.time()
  root = _WORKDIR.value
  data_dir = os.path.join(root, "data")
  corpus = build_toy_corpus(data_dir, ToyCorpusConfig(programs=_PROGRAMS.value,
                                                            vocab_size=_VOCAB.value),
                            log=logging.info)
  pre_dir, mid_dir = os.path.join(root, "pretrain"), os.path.join(root, "midtrain")
  timings = {"data": round(time.time() - t_start, 1)}
  pre = run_stage("pretrain", data_dir, pre_dir, _PRETRAIN_STEPS.value)
  mid = run_stage("midtrain", data_dir, mid_dir, _MIDTRAIN_STEPS.value, init_from=pre_dir)
  timings.update(pretrain=pre["seconds"], midtrain=mid["seconds"])

  tokenizer = load_tokenizer(corpus["tokenizer"])
  traces = heldout_traces(data_dir, _EVAL_PROGRAMS.value)
  mid_cfg = experiment_config(stage_config("midtrain", data_dir, None, init_from=pre_dir))
  models = {"untrained": (mid_cfg.model, init_params(mid_cfg.model, jax.random.key(0)))}
  for name, workdir in (("pretrained", pre_dir), ("midtrained", mid_dir)):
    cfg, params = load_params(workdir)
    models[name] = (cfg.replace(rope_scaling=mid_cfg.model.rope_scaling), params)
  results = {}
  t_eval = time.time()
  for name, (cfg, params) in models.items():
    results[name], rows = evaluate(name, cfg, params, tokenizer, traces, _FRAMES_PER_TRACE.value)
    with open(os.path.join(root, f"trace_eval_{name}.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  timings["eval"] = round(time.time() - t_eval, 1)
  plot = os.path.join(root, "loss.png")
  plot_metrics([pre_dir, mid_dir], plot)
  timings["total"] = round(time.time() - t_start, 1)
  summary = {"trace_eval": results, "timings_s": timings, "corpus": corpus["counts"],
             "pretrain": pre, "midtrain": mid}
  with open(os.path.join(root, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2, default=str)
  print(f"\nTrace prediction on {len(traces)} held-out synthetic programs "
        f"({_FRAMES_PER_TRACE.value} teacher-forced frames each):\n{table(results)}\n")
  print(f"held-out loss: pretrain {pre.get('eval_loss')}, midtrain (traces) {mid.get('eval_loss')}")
  print(f"time: {timings}")
  print(f"loss curves: {plot}\ncheckpoints: {pre_dir}/checkpoints, {mid_dir}/checkpoints\n"
        f"per-program results: {root}/trace_eval_*.jsonl; summary: {root}/summary.json")


if __name__ == "__main__":
  app.run(main)
