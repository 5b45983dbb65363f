"""Evaluations: CruxEval-O/I, trace prediction, HumanEval/MBPP pass@k, MATH-500.

    from cwm_jax.evals import SamplerCompleter, evaluate_traces
    completer = SamplerCompleter.from_params(model_cfg, params, tokenizer, max_len=4096)
    summary, rows = evaluate_traces(completer, traces, max_new_tokens=2048)

    python -m experiments.main --config=experiments/configs/eval.py:cruxeval \\
        --workdir=DIR --config.checkpoint=CKPT

  model.py          `Completer` protocol (prompts -> texts) and `SamplerCompleter`
  data.py           benchmark loaders (validated, file:line errors) and `download`
  execution.py      check programs in the sandbox -> pass/fail + reason
  passk.py          unbiased pass@k
  code_extract.py   code out of completions (fenced, whole function, continuation)
  codegen.py        sample -> programs -> sandbox -> pass@k (HumanEval, MBPP)
  humaneval.py, mbpp.py, cruxeval.py, math500.py   the benchmarks
  trace_metrics.py  trace-prediction metrics (definitions in its docstring)
  latex_sympy.py    eval-free LaTeX -> sympy parser (MATH-500 fallback)
  prompting.py      plain / chat / reasoning prompt formats
  config.py, runner.py   ConfigDict -> EvalConfig; `run_from_config`

Every program built from model output runs in cwm_jax.sandbox.
"""

from cwm_jax.evals.codegen import CodegenSampling
from cwm_jax.evals.data import (BENCHMARKS, BenchmarkFileError, download, load_benchmark,
                                load_cruxeval, load_humaneval, load_math500, load_mbpp)
from cwm_jax.evals.execution import CheckResult, ExecutionConfig, run_checks
from cwm_jax.evals.model import Completer, SamplerCompleter
from cwm_jax.evals.passk import mean_pass_at_k, pass_at_k
from cwm_jax.evals.trace_metrics import TraceEvalConfig, evaluate_traces

__all__ = [
    "BENCHMARKS", "BenchmarkFileError", "CheckResult", "CodegenSampling", "Completer",
    "ExecutionConfig", "SamplerCompleter", "TraceEvalConfig", "download", "evaluate_traces",
    "load_benchmark", "load_cruxeval", "load_humaneval", "load_math500", "load_mbpp",
    "mean_pass_at_k", "pass_at_k", "run_checks",
]
