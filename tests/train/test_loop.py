"""The training loop on `tiny`: exact resume (in process, after kill -9, after SIGTERM),
corrupt-checkpoint fallback, NaN policies, stage transitions and workdir errors.

The reference for every resume test is the same run done without interruption:
per-step losses in metrics.jsonl must be equal bit for bit (JSON keeps a float's
exact repr).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwm_jax.train import loop as loop_lib
from cwm_jax.train import step as step_lib
from cwm_jax.train.checkpoint import load_params
from cwm_jax.train.config import ConfigError, experiment_config
from experiments.configs import pretrain as pretrain_config

REPO = pathlib.Path(__file__).resolve().parents[2]
# Small enough for ~0.1 s steps on a loaded 2-core machine.
SMALL = {"model.n_layers": 2, "model.d_model": 32, "model.head_dim": 8, "model.mlp_dim": 64,
         "model.window": 16, "model.attention_chunk": 32, "data.seq_len": 64,
         "data.batch_size": 8, "train.log_every": 1, "train.eval_every": 4,
         "train.eval_batches": 1, "optimizer.warmup_steps": 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """Code documents (this repository's own source) and a toy sentencepiece model."""
  import shutil
  from cwm_jax.tokenizer.toy import build_toy_sentencepiece
  d = tmp_path_factory.mktemp("data")
  shutil.copy(build_toy_sentencepiece(str(d / "toy")), d / "tokenizer.model")
  files = sorted((REPO / "cwm_jax").rglob("*.py"))
  docs = [{"text": f.read_text()} for f in files if f.stat().st_size > 500]
  for name, part in (("code", docs[1::4] + docs[2::4] + docs[3::4]), ("code_heldout", docs[::4])):
    with open(d / f"{name}.jsonl", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in part)
  return d


def flag_overrides(steps: int, **extra) -> dict:
  out = {**SMALL, "train.steps": steps, "train.checkpoint_every": 5,
         "optimizer.total_steps": 40, **extra}
  return out


def make_config(data_dir, overrides: dict, module=pretrain_config):
  config = module.get_config(f"tiny,data_dir={data_dir}")
  from cwm_jax.tokenizer import load_tokenizer
  config.model.vocab_size = load_tokenizer(f"{data_dir}/tokenizer.model").vocab_size
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def losses(workdir) -> dict[int, float]:
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")) if l.strip()]
  out = {}
  for line in lines:
    if "loss" in line:
      assert line["step"] not in out, f"step {line['step']} logged twice"
      out[line["step"]] = line["loss"]
  return out


def run(data_dir, workdir, steps, **extra):
  cfg = experiment_config(make_config(data_dir, flag_overrides(steps, **extra)))
  return loop_lib.train(cfg, str(workdir))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """12 uninterrupted steps: the losses every resume test must reproduce."""
  workdir = tmp_path_factory.mktemp("reference")
  summary = run(data_dir, workdir, 12)
  assert summary["step"] == 12
  return workdir, losses(workdir)


def test_metrics_and_workdir_layout(reference):
  workdir, ref = reference
  assert sorted(ref) == list(range(1, 13))
  assert all(np.isfinite(v) for v in ref.values())
  assert ref[12] < ref[1]  # it learns
  lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  first = lines[0]
  for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu_formula", "nonfinite"):
    assert key in first, key
  assert any("eval_loss" in l for l in lines)
  assert any(k.startswith("data/") for k in first)
  assert json.load(open(workdir / "config.json"))["stage"] == "pretrain"
  assert list((workdir / "tensorboard").rglob("events.out.tfevents.*"))
  # keep_last=3 with checkpoints every 5 steps and at the end
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [5, 10, 12]


def test_resume_in_process_is_exact(data_dir, reference, tmp_path):
  _, ref = reference
  run(data_dir, tmp_path, 6)            # stops after step 6 (checkpoint at 5 and 6)
  assert run(data_dir, tmp_path, 12)["step"] == 12  # same workdir: resumes from 6
  assert losses(tmp_path) == ref


def _cli(data_dir, workdir, steps, **extra) -> list[str]:
  args = [sys.executable, "-m", "experiments.main",
          f"--config=experiments/configs/pretrain.py:tiny,data_dir={data_dir}",
          f"--workdir={workdir}"]
  from cwm_jax.tokenizer import load_tokenizer
  overrides = {**flag_overrides(steps, **extra),
               "model.vocab_size": load_tokenizer(f"{data_dir}/tokenizer.model").vocab_size}
  args += [f"--config.{k}={v}" for k, v in overrides.items()]
  return args


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = str(REPO)
  # XLA_FLAGS (8 fake devices, from conftest) stays: the reference ran on the same mesh.
  return env


def _wait_for_step(workdir, step, proc, timeout=240):
  ckpt = pathlib.Path(workdir) / "checkpoints"
  deadline = time.time() + timeout
  while time.time() < deadline:
    if ckpt.is_dir() and any(p.name.isdigit() and int(p.name) >= step for p in ckpt.iterdir()):
      return
    if proc.poll() is not None:
      raise AssertionError(f"run ended (rc {proc.returncode}) before checkpoint {step}: "
                           f"{proc.stderr.read().decode()[-3000:]}")
    time.sleep(0.01)
  raise AssertionError(f"no checkpoint {step} after {timeout}s")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_exactly(data_dir, reference, tmp_path, sig):
  """N steps in one go vs: start, kill at ~N/2 (kill -9 or preemption), re-run the command."""
  _, ref = reference
  proc = subprocess.Popen(_cli(data_dir, tmp_path, 12, **{"train.checkpoint_every": 3}),
                          cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    _wait_for_step(tmp_path, 6, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  if sig == signal.SIGTERM:
    assert proc.returncode == 0, err.decode()[-3000:]
    assert b"preempted: checkpoint of step" in err
  assert steps[-1] < 12, "the run finished before it could be interrupted"
  done = subprocess.run(_cli(data_dir, tmp_path, 12, **{"train.checkpoint_every": 3}), cwd=REPO,
                        env=_env(), capture_output=True, timeout=300)
  assert done.returncode == 0, done.stderr.decode()[-3000:]
  assert losses(tmp_path) == ref


def test_corrupt_latest_checkpoint_falls_back(data_dir, reference, tmp_path, caplog):
  _, ref = reference
  run(data_dir, tmp_path, 10)  # checkpoints 5 and 10
  latest = tmp_path / "checkpoints" / "10"
  victims = [p for p in latest.rglob("*") if p.is_file() and p.stat().st_size > 0
             and "state" in str(p.relative_to(latest))]
  assert victims
  for p in victims:
    p.write_bytes(b"\0garbage")
  with caplog.at_level("WARNING"):
    run(data_dir, tmp_path, 12)
  assert any("10" in r.getMessage() and "5" in r.getMessage() for r in caplog.records
             if r.levelname == "WARNING"), [r.getMessage() for r in caplog.records]
  assert losses(tmp_path) == ref


def _poison_at(monkeypatch, bad_step: int):
  """Makes the update of optimizer step `bad_step` produce NaN loss and params."""
  real = step_lib.train_step

  def poisoned(state, batch, **kw):
    new, metrics = real(state, batch, **kw)
    bad = state.step + 1 == bad_step
    nan = lambda x: jnp.where(bad, jnp.nan, x)
    new = new.replace(params=jax.tree.map(nan, new.params))
    return new, {**metrics, "loss": nan(metrics["loss"])}

  monkeypatch.setattr(step_lib, "train_step", poisoned)


def test_nan_step_is_skipped_and_never_checkpointed(data_dir, reference, tmp_path, monkeypatch):
  _, ref = reference
  _poison_at(monkeypatch, 3)
  run(data_dir, tmp_path, 6)
  lines = {l["step"]: l for l in map(json.loads, open(tmp_path / "metrics.jsonl")) if "loss" in l}
  assert np.isnan(lines[3]["loss"]) and lines[3]["nonfinite"] == 1
  assert [lines[s]["loss"] for s in (1, 2)] == [ref[1], ref[2]]
  assert all(np.isfinite(lines[s]["loss"]) for s in (4, 5, 6))
  _, params = load_params(str(tmp_path))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_nan_policy_stop(data_dir, tmp_path, monkeypatch):
  _poison_at(monkeypatch, 3)
  with pytest.raises(loop_lib.NonFiniteLossError, match="step 3: loss=nan"):
    run(data_dir, tmp_path, 6, **{"train.nan_policy": "stop", "train.checkpoint_every": 1})
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps and max(steps) < 3


def test_workdir_of_another_experiment_is_refused(data_dir, tmp_path):
  run(data_dir, tmp_path, 1)
  with pytest.raises(ConfigError, match="d_model"):
    run(data_dir, tmp_path, 2, **{"model.d_model": 48, "model.head_dim": 12})


def test_stage_transitions(data_dir, tmp_path):
  """pretrain -> midtrain (optimizer state, schedule and step carried over, RoPE scaling on,
  longer rows) -> sft (fresh optimizer, params of midtrain); and init from HF weights."""
  from cwm_jax.train.optimizer import make_schedule
  pre = tmp_path / "pre"
  run(data_dir, pre, 4)
  mid = tmp_path / "mid"
  mid_cfg = experiment_config(make_config(data_dir, flag_overrides(
      3, **{"data.seq_len": 128, "train.eval_every": 0}), module=pretrain_config))
  mid_cfg = dataclasses.replace(mid_cfg, **{"stage": "midtrain", "name": "mid",
                                 "init_from": str(pre), "init_optimizer_state": True,
                                 "model": mid_cfg.model.replace(rope_scaling={
                                     "factor": 2.0, "original_max_positions": 64})})
  loop_lib.train(mid_cfg, str(mid))
  lines = [json.loads(l) for l in open(mid / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [5, 6, 7]  # the step counter continues
  schedule = make_schedule(mid_cfg.optimizer)
  assert [l["lr"] for l in lines] == pytest.approx([float(schedule(s)) for s in (4, 5, 6)])
  _, pre_params = load_params(str(pre))
  _, mid_params = load_params(str(mid))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(pre_params),
                                                      jax.tree.leaves(mid_params)))
  # SFT-style start: parameters only, fresh optimizer, step 0.
  sft_cfg = dataclasses.replace(mid_cfg, **{"stage": "sft", "name": "sft",
                                 "init_from": str(mid), "init_optimizer_state": False})
  from cwm_jax.sharding import make_mesh
  from cwm_jax.train.init import initial_state
  from cwm_jax.train.optimizer import make_optimizer
  from cwm_jax.train.state import abstract_train_state, train_state_shardings
  mesh = make_mesh(sft_cfg.mesh)
  opt = make_optimizer(sft_cfg.optimizer)
  sh = train_state_shardings(mesh, sft_cfg.model, opt)
  state = initial_state(sft_cfg, opt, mesh, sh, abstract_train_state(sft_cfg.model, opt))
  assert int(state.step) == 0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(mid_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # From converted HF weights.
  from cwm_jax.convert import save_hf
  hf = tmp_path / "hf"
  save_hf(mid_params, mid_cfg.model, str(hf))
  hf_cfg = dataclasses.replace(sft_cfg, **{"init_from": str(hf)})
  state = initial_state(hf_cfg, opt, mesh, sh, abstract_train_state(hf_cfg.model, opt))
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(mid_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_batch_that_does_not_split_over_the_mesh_is_a_config_error(data_dir, tmp_path):
  with pytest.raises(ConfigError, match="config.data.batch_size"):
    run(data_dir, tmp_path, 1, **{"data.batch_size": 4})  # 8 devices on the data axis


def test_init_from_a_different_model_is_refused(data_dir, tmp_path):
  run(data_dir, tmp_path / "pre", 1)
  with pytest.raises(ConfigError, match="n_layers"):
    run(data_dir, tmp_path / "other", 1,
        **{"model.n_layers": 4, "init_from": str(tmp_path / "pre")})


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="the toy corpus traces in the sandbox")
def test_sft_config_trains_on_assistant_turns_from_a_checkpoint(tmp_path):
  """experiments/configs/sft.py:tiny on the toy corpus's chat data, from a checkpoint:
  fresh optimizer (steps restart at 1), and only assistant tokens carry loss."""
  from data_pipelines.toy_corpus import ToyCorpusConfig, build_toy_corpus
  from experiments.configs import sft as sft_config
  data = tmp_path / "data"
  build_toy_corpus(str(data), ToyCorpusConfig(programs=30, heldout_fraction=0.2, vocab_size=800,
                                              num_workers=1), log=lambda *_: None)
  small = {k: v for k, v in SMALL.items() if k.startswith("model.")}
  small.update({"model.vocab_size": 800, "data.seq_len": 256, "data.batch_size": 8,
                "train.log_every": 1, "train.eval_every": 0, "train.eval_batches": 1,
                "optimizer.warmup_steps": 1})
  run_pre = make_config(data, {**small, "train.steps": 2, "optimizer.total_steps": 10})
  loop_lib.train(experiment_config(run_pre), str(tmp_path / "pre"))
  cfg = experiment_config(make_config(data, {**small, "train.steps": 2, "optimizer.total_steps": 10,
                                             "init_from": str(tmp_path / "pre")},
                                      module=sft_config))
  assert {s.kind for s in cfg.data.sources} == {"chat", "trace"}
  loop_lib.train(cfg, str(tmp_path / "sft"))
  lines = [json.loads(l) for l in open(tmp_path / "sft" / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2]
  # Loss weight: next-token targets on assistant turns (and replayed traces' frames)
  # only, so well under every position of the batch.
  assert all(0 < l["n_tokens"] < 0.9 * 8 * 256 for l in lines)
  assert all(np.isfinite(l["loss"]) for l in lines)


# ---------------------------------------------------------------- producers, objectives, hooks


class SeededProducer:
  """Batches drawn from an RNG seeded by how many were drawn (its whole state), with
  a declared per-row weight; `nan_at` makes that batch's weights NaN."""

  def __init__(self, vocab, batch, seq_len, nan_at=None):
    self.vocab, self.batch, self.seq_len, self.nan_at = vocab, batch, seq_len, nan_at
    self.count, self.closed = 0, False

  def __next__(self):
    rng = np.random.default_rng(self.count)
    self.count += 1
    weight = rng.uniform(0.5, 2.0, self.batch).astype(np.float32)
    if self.count == self.nan_at:
      weight[:] = np.nan
    return {"tokens": rng.integers(0, self.vocab, (self.batch, self.seq_len)).astype(np.int32),
            "loss_mask": (rng.random((self.batch, self.seq_len)) < 0.7).astype(np.int32),
            "row_weight": weight}

  def get_state(self):
    return {"count": self.count}

  def set_state(self, state):
    self.count = state["count"]

  def close(self):
    self.closed = True

  def metrics(self):
    return {"producer/count": self.count}


def row_weighted_objective(model_cfg):
  """-sum over rows of row_weight * (token log-likelihood sum), per token weight."""
  from cwm_jax.train.objectives import Objective, ObjectiveSums, token_logprobs

  def sums(params, batch):
    logp_BT, w_BT = token_logprobs(params, batch, model_cfg, loss_chunk=32)
    loss = -jnp.sum(batch["row_weight"][:, None] * w_BT * logp_BT)
    return ObjectiveSums(loss, jnp.sum(w_BT), {"loss": loss})

  return Objective("row_weighted", sums, row_keys=("row_weight",))


def test_any_producer_and_objective_resume_exactly_with_hooks(data_dir, tmp_path):
  """A non-grain producer named in the config and an objective reading a declared
  row array: the producer's state is checkpointed, so a run stopped at step 4 and
  resumed logs the same losses, bit for bit, as one run of 8 steps; step hooks see
  every step; the producer's metrics are logged; train closes the producer."""
  from cwm_jax.train import components
  seen = {}

  def factory(cfg):
    seen["producer"] = SeededProducer(cfg.model.vocab_size, cfg.data.batch_size,
                                      cfg.data.seq_len)
    return seen["producer"]

  components.register("producer", "seeded_test", factory)
  components.register("objective", "row_weighted_test", lambda cfg: row_weighted_objective(cfg.model))
  extra = {"data.producer": "seeded_test", "train.objective": "row_weighted_test",
           "train.loss_normaliser": 1000.0, "train.eval_every": 0}
  hooked = []
  hook = lambda state, step, metrics: hooked.append((step, int(state.step)))
  whole, parts = tmp_path / "whole", tmp_path / "parts"
  cfg = lambda steps: experiment_config(make_config(data_dir, flag_overrides(steps, **extra)))
  loop_lib.train(cfg(8), str(whole), step_hooks=[hook])
  assert hooked == [(k, k) for k in range(1, 9)] and seen["producer"].closed
  loop_lib.train(cfg(4), str(parts))
  assert seen["producer"].count == 4
  loop_lib.train(cfg(8), str(parts))
  assert seen["producer"].count == 8  # resumed from the checkpoint's state (4), drew 4 more
  assert losses(parts) == losses(whole) and len(losses(whole)) == 8
  lines = [json.loads(l) for l in open(whole / "metrics.jsonl")]
  assert [l["producer/count"] for l in lines] == list(range(1, 9))


def test_nan_policy_holds_for_any_producer(data_dir, tmp_path):
  cfg = experiment_config(make_config(data_dir, flag_overrides(5, **{"train.eval_every": 0})))
  producer = SeededProducer(cfg.model.vocab_size, cfg.data.batch_size, cfg.data.seq_len,
                            nan_at=3)
  loop_lib.train(cfg, str(tmp_path), producer=producer, objective=row_weighted_objective(cfg.model))
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["nonfinite"] for l in lines] == [0, 0, 1, 0, 0]
  assert all(np.isfinite(l["loss"]) for l in lines if l["step"] != 3)
  params = load_params(str(tmp_path))[1]
  assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(params))


def test_trace_metrics_eval_hook_from_the_config(tmp_path):
  """`train.eval_hooks=("trace_metrics",)` runs trace-prediction metrics on held-out
  traces at evaluation: a real midtrain config on a small real toy corpus."""
  from data_pipelines.toy_corpus import ToyCorpusConfig, build_toy_corpus
  from experiments.configs import midtrain as midtrain_config
  data = tmp_path / "data"
  build_toy_corpus(str(data), ToyCorpusConfig(programs=40, vocab_size=600, heldout_fraction=0.3),
                   log=lambda *a: None)
  overrides = {**SMALL, "data.seq_len": 256, "data.batch_size": 8, "train.steps": 2,
               "train.eval_every": 0, "train.eval_hooks": ("trace_metrics",),
               "train.trace_eval_programs": 2, "train.trace_eval_frames": 1,
               "train.trace_eval_max_new_tokens": 8, "optimizer.total_steps": 4,
               "init_optimizer_state": False}
  config = make_config(data, overrides, module=midtrain_config)
  config.init_from = ""
  summary = loop_lib.train(experiment_config(config), str(tmp_path / "run"))
  assert summary["eval_trace/programs"] == 2 and summary["eval_trace/unreadable"] == 0
  assert 0.0 <= summary["eval_trace/valid_json"] <= 1.0
  lines = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert "eval_trace/state_exact_match" in lines[-1]
  bad = make_config(data, {**overrides, "train.eval_hooks": ("nope",)}, module=midtrain_config)
  bad.init_from = ""
  with pytest.raises(ConfigError, match=r"config.train.eval_hooks\[0\]='nope'"):
    experiment_config(bad)
