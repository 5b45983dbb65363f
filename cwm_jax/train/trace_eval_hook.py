"""The `trace_metrics` eval hook: trace-prediction metrics during training.

At each evaluation the current params predict teacher-forced next frames of the
first `trace_eval_programs` held-out traces (`data.eval_sources` of kind
"trace"), greedily through the `Sampler`, scored by `cwm_jax.evals.trace_metrics`
(state / action exact match, key+value match, valid format, output accuracy).
Enable with `--config.train.eval_hooks=trace_metrics`.
"""

from __future__ import annotations

import json

from cwm_jax.train.config import ConfigError, ExperimentConfig

METRICS = ("state_exact_match", "action_exact_match", "key_value_match", "valid_json",
           "valid_format", "output_accuracy")


def _heldout_traces(cfg: ExperimentConfig, n: int):
  from data_pipelines.pipeline.sources import open_sources  # pylint: disable=import-outside-toplevel
  from data_pipelines.traces.parse import TraceParseError, parse_trace  # pylint: disable=import-outside-toplevel
  specs = [s for s in cfg.data.eval_sources if s.kind == "trace"]
  if not specs:
    raise ConfigError("config.train.eval_hooks has 'trace_metrics' but config.data.eval_sources "
                      "has no source of kind 'trace'.")
  traces, skipped = [], 0
  for spec in specs:
    records = open_sources(spec.paths)
    for i in range(len(records)):
      if len(traces) == n:
        return traces, skipped
      raw = records[i]
      try:
        traces.append(parse_trace(json.loads(raw)["trace_text"]))
      except (ValueError, KeyError, TypeError, TraceParseError):
        skipped += 1  # counted and reported with the metrics
  return traces, skipped


class TraceMetricsHook:
  """`__call__(params, step)` -> {"eval_trace/<metric>": rate, ...}."""

  def __init__(self, cfg: ExperimentConfig):
    from cwm_jax.tokenizer import load_tokenizer  # pylint: disable=import-outside-toplevel
    self.cfg = cfg
    self.traces, self.skipped = _heldout_traces(cfg, cfg.train.trace_eval_programs)
    if not self.traces:
      raise ConfigError(f"config.data.eval_sources: no readable trace record for the "
                        f"'trace_metrics' eval hook ({self.skipped} unreadable).")
    self.tokenizer = load_tokenizer(cfg.data.tokenizer_path)

  def __call__(self, params, step: int) -> dict:
    del step
    from cwm_jax.evals.model import SamplerCompleter  # pylint: disable=import-outside-toplevel
    from cwm_jax.evals.trace_metrics import TraceEvalConfig, evaluate_traces  # pylint: disable=import-outside-toplevel
    completer = SamplerCompleter.from_params(self.cfg.model, params, self.tokenizer,
                                             max_len=self.cfg.model.max_seq_len,
                                             batch_size=len(self.traces))
    summary, _ = evaluate_traces(completer, self.traces, config=TraceEvalConfig(
        max_new_tokens=self.cfg.train.trace_eval_max_new_tokens,
        max_frame_tokens=self.cfg.train.trace_eval_max_new_tokens,
        frames_per_trace=self.cfg.train.trace_eval_frames))
    out = {f"eval_trace/{k}": summary.get(k) for k in METRICS}
    out["eval_trace/programs"] = len(self.traces)
    out["eval_trace/unreadable"] = self.skipped
    return out
