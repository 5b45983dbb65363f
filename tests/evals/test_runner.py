"""The eval runner: config validation (variants, unknown keys, bad values), a full `tiny`
run with a reference model that answers every benchmark from the truth (all 1.0, files
written), and a real tiny JAX model behind SamplerCompleter loaded from a checkpoint."""

import json
import os

import jax
import pytest

from cwm_jax.evals import runner
from cwm_jax.evals.config import eval_config
from cwm_jax.evals.data import load_cruxeval, load_humaneval, load_math500, load_mbpp
from cwm_jax.train.config import ConfigError
from data_pipelines.traces import executors
from data_pipelines.traces.trace import trace_context
from experiments.configs import eval as eval_configs

from tests.evals.conftest import TraceOracle, dev_file

BOS = "<|begin_of_text|>"


@pytest.mark.parametrize("variant", eval_configs.VARIANTS)
def test_every_variant_validates(variant):
  arg = variant if variant == "tiny" else variant + ",data_dir=/data/evals"
  cfg = eval_config(eval_configs.get_config(arg))
  assert cfg.benchmarks and cfg.execution.workers >= 1
  if variant == "humaneval":
    assert cfg.codegen.n == 20 and cfg.codegen.ks == (1, 10)


@pytest.mark.parametrize("key, value, message", [
    ("bogus", 1, r"config.bogus: unknown key"),
    ("benchmarks", "cruxeval_o,nope", r"config.benchmarks has 'nope'"),
    ("prompt_format", "xml", r"config.prompt_format='xml'"),
    ("codegen.ks", "1,x", r"config.codegen.ks='1,x'"),
    ("codegen.n", "2", r"config.codegen.n='2': expected int"),
    ("sandbox.workers", 0, r"workers=0"),
    ("trace.max_frame_tokens", 0, r"max_frame_tokens=0"),
])
def test_bad_configs_name_the_key(key, value, message):
  raw = eval_configs.get_config("tiny").to_dict()
  *groups, last = key.split(".")
  target = raw
  for g in groups:
    target = target[g]
  target[last] = value
  with pytest.raises(ConfigError, match=message):
    eval_config(raw)


def test_missing_data_file_is_a_config_error(tmp_path):
  raw = eval_configs.get_config("cruxeval,data_dir=" + str(tmp_path)).to_dict()
  with pytest.raises(ConfigError, match=r"config.data.cruxeval: .*cruxeval.jsonl' does not exist"):
    runner.run_from_config(raw, str(tmp_path), completer=object())


def test_malformed_data_file_is_a_config_error(tmp_path):
  (tmp_path / "cruxeval.jsonl").write_text('{"id": "a", "code": "def f(): pass"}\n')
  raw = eval_configs.get_config("cruxeval,data_dir=" + str(tmp_path)).to_dict()
  with pytest.raises(ConfigError, match=r"config.data.cruxeval: .*cruxeval.jsonl:1: missing "
                     r"field 'input'"):
    runner.run_from_config(raw, str(tmp_path), completer=object())


class ReferenceModel(TraceOracle):
  """Answers every benchmark's plain prompt from the dev files' truth; traces the
  context of a trace prompt with the real tracer and replays it."""

  def __init__(self, tokenizer):
    super().__init__(tokenizer, [])
    self.answer = self._route
    self.he = {p.prompt: p for p in load_humaneval(dev_file("humaneval_dev.jsonl"))}
    self.mbpp = load_mbpp(dev_file("mbpp_dev.jsonl"))
    self.crux = load_cruxeval(dev_file("cruxeval_dev.jsonl"))
    self.math = load_math500(dev_file("math500_dev.jsonl"))

  def _route(self, text, kwargs):
    if text.startswith(BOS + "<|trace_context_start|>"):
      context = text[len(BOS + "<|trace_context_start|>"):text.index("<|frame_sep|>")]
      if context not in self.by_context:
        self.by_context[context] = trace_context(context,
                                                 executor=executors.sandbox_executor).trace
      return self._answer(text, kwargs)
    body = text[len(BOS):]
    if body in self.he:
      return self.he[body].canonical_solution
    for p in self.mbpp:
      if p.text.strip() in body:
        return p.code + "\n[DONE]"
    for p in self.crux:
      if p.code in body:
        if body.endswith(f"assert f({p.input}) == "):
          return p.output + "\n"
        return f"{p.input}) == {p.output}\n"
    for p in self.math:
      if p.problem in body:
        return f"So the answer is $\\boxed{{{p.answer}}}$."
    raise AssertionError(f"unknown prompt {body[:80]!r}")


def tiny_config():
  """eval.py:tiny reading the dev files from where the other eval tests find them
  (CWM_EVAL_DATA or ../shared/data); skipped when they are not there."""
  config = eval_configs.get_config("tiny")
  for name in ("humaneval", "mbpp", "cruxeval", "math500"):
    config.data[name] = dev_file(f"{name}_dev.jsonl")
  return config


def test_tiny_run_with_a_reference_model_scores_one_everywhere(tmp_path, tokenizer, need_sandbox):
  summary = runner.run_from_config(tiny_config(), str(tmp_path),
                                   completer=ReferenceModel(tokenizer))
  scores = {
      "cruxeval_o": summary["cruxeval_o"]["accuracy"],
      "cruxeval_i": summary["cruxeval_i"]["accuracy"],
      "cruxeval_o_trace": summary["cruxeval_o_trace"]["accuracy"],
      "humaneval": summary["humaneval"]["pass@1"],
      "mbpp": summary["mbpp"]["pass@1"],
      "math500": summary["math500"]["accuracy"],
  }
  for name in ("trace_cruxeval", "trace_synthetic"):
    for metric in ("output_accuracy", "valid_format", "state_exact_match", "action_exact_match",
                   "valid_json", "key_match", "key_value_match"):
      scores[f"{name}/{metric}"] = summary[name][metric]
  assert scores == {k: 1.0 for k in scores}
  assert summary["trace_synthetic"]["programs"] == 4
  assert summary["trace_cruxeval"]["traces"] == 4 and summary["trace_cruxeval"]["dropped"] == {}
  written = json.load(open(tmp_path / "evals" / "summary.json"))
  assert written["humaneval"]["pass@1"] == 1.0
  for name in summary:
    if isinstance(summary[name], dict):
      rows = [json.loads(l) for l in open(tmp_path / "evals" / f"{name}.jsonl")]
      expected = 4 if name != "trace_synthetic" else summary[name]["traces"]
      assert len(rows) == expected, name


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  from cwm_jax.convert import save_orbax
  from cwm_jax.model import get_preset
  from cwm_jax.model.params import init_params
  from cwm_jax.tokenizer.toy import build_toy_tiktoken
  d = tmp_path_factory.mktemp("ckpt")
  tok_path = build_toy_tiktoken(d)
  cfg = get_preset("tiny", vocab_size=1024, max_seq_len=4096)
  save_orbax(init_params(cfg, jax.random.key(0)), cfg, str(d / "model"))
  return str(d / "model"), tok_path


def test_real_tiny_model_from_a_checkpoint(tiny_checkpoint, tmp_path, need_sandbox):
  ckpt, tok_path = tiny_checkpoint
  config = tiny_config()
  config.checkpoint, config.tokenizer = ckpt, tok_path
  config.benchmarks = "cruxeval_o,trace_synthetic"
  config.limit = 2
  config.dtype = ""
  config.max_len = 2048  # the CruxEval prompts of the toy tokenizer need ~2200 slots
  config.trace.synthetic_n = 2
  config.trace.max_new_tokens = 16
  config.trace.max_frame_tokens = 8
  config.max_new_tokens = 8
  summary = runner.run_from_config(config, str(tmp_path))
  assert summary["cruxeval_o"]["problems"] == 2
  for name in ("cruxeval_o", "trace_synthetic"):
    assert summary[name]["prompts_too_long"] >= 0
  assert 0.0 <= summary["trace_synthetic"]["key_match"] <= 1.0
  assert summary["trace_synthetic"]["frames"] >= 1
  rows = [json.loads(l) for l in open(tmp_path / "evals" / "cruxeval_o.jsonl")]
  # A random model's greedy text: a string per problem, at most 8 tokens long.
  assert all(isinstance(r["completion"], str) for r in rows)
  assert os.path.exists(tmp_path / "evals" / "trace_synthetic.jsonl")
