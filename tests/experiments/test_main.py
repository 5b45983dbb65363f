"""`python -m experiments.main` turns user mistakes into one `error:` line, never a traceback."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args, message", [
    (["--config.train.stepz=3"], 'unknown config key: stepz Did you mean "steps"'),
    (["--config.train.steps=ten"], "flag --config.train.steps=ten"),
    (["--config=experiments/configs/pretrain.py:huge"], "config variant 'huge': expected one of"),
    (["--config=experiments/configs/pretrain.py:tiny,data_dir=/nonexistent"],
     "config.data.sources: source 'code': no file matches '/nonexistent/code.jsonl'"),
])
def test_user_mistakes_are_one_line(tmp_path, args, message):
  run = subprocess.run([sys.executable, "-m", "experiments.main",
                        "--config=experiments/configs/pretrain.py:tiny", f"--workdir={tmp_path}",
                        *args], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode != 0
  assert "Traceback" not in run.stderr, run.stderr[-3000:]
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, last
