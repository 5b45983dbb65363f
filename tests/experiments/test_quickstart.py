"""The README's main command, shrunk: every stage runs and the summary is complete."""

import json
import os
import shutil
import subprocess
import sys
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="the corpus is traced in the sandbox")
def test_quickstart_runs_end_to_end(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  env.pop("XLA_FLAGS", None)  # the quickstart picks its own device count, like a user's run
  run = subprocess.run(
      [sys.executable, "-m", "experiments.quickstart", f"--workdir={tmp_path}", "--programs=100",
       "--vocab_size=800", "--pretrain_steps=2", "--midtrain_steps=2", "--eval_programs=2",
       "--frames_per_trace=1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-4000:]
  assert "Trace prediction on 2 held-out synthetic programs" in run.stdout
  summary = json.load(open(tmp_path / "summary.json"))
  assert set(summary["trace_eval"]) == {"untrained", "pretrained", "midtrained"}
  for name, metrics in summary["trace_eval"].items():
    assert metrics["traces"] == 2 and 0.0 <= metrics["state_exact_match"] <= 1.0, name
  assert summary["midtrain"]["step"] == 4  # continues the pretraining step counter
  assert (tmp_path / "loss.png").stat().st_size > 0
  assert (tmp_path / "midtrain" / "checkpoints").is_dir()
