import json
import os
import subprocess
import sys

import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest

from cwm_jax.train.metrics import MetricsWriter
from experiments import plot
from experiments.plot import eval_keys, plot_metrics

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def make_run(workdir, steps, offset, eval_every=None, config=None):
  """A workdir whose metrics.jsonl holds loss = offset + 1/step (and eval_loss every few steps)."""
  with MetricsWriter(str(workdir), total_steps=steps, tensorboard=False) as w:
    for step in range(1, steps + 1):
      row = {"loss": offset + 1 / step, "lr": 1e-3}
      if eval_every and step % eval_every == 0:
        row["eval_loss"] = offset + 2 / step
      w.write(step, row)
  if config is not None:
    (workdir / "config.json").write_text(json.dumps(config))
  return str(workdir)


@pytest.fixture
def saved_figures(monkeypatch):
  """The figures plot_metrics saves, kept open for inspection."""
  figures = []
  original = matplotlib.figure.Figure.savefig

  def savefig(fig, *args, **kwargs):
    figures.append(fig)
    return original(fig, *args, **kwargs)

  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
  monkeypatch.setattr(plot.plt, "close", lambda fig: None)
  return figures


def lines_by_label(ax):
  return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}


def test_curves_hold_the_logged_values(tmp_path, saved_figures):
  a = make_run(tmp_path / "pretrain", 10, 0.0, eval_every=5)
  b = make_run(tmp_path / "midtrain", 6, 1.0)
  out = plot_metrics([a, b], str(tmp_path / "out" / "loss.png"))
  image = matplotlib.image.imread(out)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
  (fig,) = saved_figures
  (ax,) = fig.axes
  lines = lines_by_label(ax)
  assert sorted(lines) == ["midtrain", "pretrain", "pretrain eval_loss"]
  assert lines["pretrain"] == (list(range(1, 11)), [1 / s for s in range(1, 11)])
  assert lines["pretrain eval_loss"] == ([5, 10], [2 / 5, 2 / 10])
  assert lines["midtrain"] == (list(range(1, 7)), [1 + 1 / s for s in range(1, 7)])
  assert ax.get_xlabel() == "step" and ax.get_ylabel() == "loss"


def test_tokens_axis_from_config_or_rates(tmp_path, saved_figures):
  a = make_run(tmp_path / "a", 4, 0.0, config={"data": {"batch_size": 8, "seq_len": 128}})
  b = make_run(tmp_path / "b", 3, 0.0)
  with MetricsWriter(b, total_steps=3, tensorboard=False) as w:  # a rates row: 512 tokens/step
    w.write(4, {"loss": 0.2, "steps_per_s": 2.0, "tokens_per_s": 1024.0})
  plot_metrics([a, b], str(tmp_path / "t.png"), metrics=("loss", "lr"), x="tokens")
  loss_ax, lr_ax = saved_figures[0].axes
  lines = lines_by_label(loss_ax)
  assert lines["a"][0] == [s * 8 * 128 for s in range(1, 5)]
  assert lines["b"][0] == [s * 512 for s in range(1, 5)]
  assert loss_ax.get_xlabel() == "training tokens" and lr_ax.get_ylabel() == "lr"


def test_eval_keys():
  keys = {"loss", "eval_loss", "eval/loss", "eval/code/loss", "eval_tokens", "z_loss", "lr"}
  assert eval_keys("loss", keys) == ["eval/code/loss", "eval/loss", "eval_loss"]
  assert eval_keys("eval_loss", keys) == []


def test_clear_errors(tmp_path):
  a = make_run(tmp_path / "a", 3, 0.0)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"'.*empty' has no metrics.jsonl"):
    plot_metrics([a, str(tmp_path / "empty")], str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="no workdir logged a finite 'accuracy'"):
    plot_metrics([a], str(tmp_path / "x.png"), metrics=("accuracy",))
  with pytest.raises(ValueError, match="x='time'"):
    plot_metrics([a], str(tmp_path / "x.png"), x="time")
  with pytest.raises(ValueError, match="cannot tell the tokens per step"):
    plot_metrics([a], str(tmp_path / "x.png"), x="tokens")
  assert not (tmp_path / "x.png").exists()


def test_cli(tmp_path):
  a = make_run(tmp_path / "a", 5, 0.0, eval_every=2)
  b = make_run(tmp_path / "b", 5, 0.5)
  env = dict(os.environ, PYTHONPATH=REPO)
  out = tmp_path / "curves.png"
  done = subprocess.run([sys.executable, "-m", "experiments.plot", a, b, f"--out={out}",
                         "--metric=loss,lr"], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 0, done.stderr
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  bad = subprocess.run([sys.executable, "-m", "experiments.plot", str(tmp_path / "nope"),
                        f"--out={out}"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
  assert bad.returncode == 1 and "has no metrics.jsonl" in bad.stderr
  assert np.asarray(matplotlib.image.imread(str(out))).shape[2] in (3, 4)


def test_a_pattern_draws_one_line_per_matching_metric(tmp_path, saved_figures):
  """RL's per-environment rewards: `reward_mean/*` draws each logged environment."""
  with MetricsWriter(str(tmp_path / "rl"), total_steps=4, tensorboard=False) as w:
    for step in range(1, 5):
      w.write(step, {"loss": 0.0, "reward_mean": step / 4, "reward_mean/code": step / 8,
                     **({"reward_mean/math": -step / 8} if step > 1 else {})})
  plot_metrics([str(tmp_path / "rl")], str(tmp_path / "r.png"), ["reward_mean", "reward_mean/*"])
  (fig,) = saved_figures
  total, per_env = fig.axes
  assert lines_by_label(total) == {"rl": ([1, 2, 3, 4], [0.25, 0.5, 0.75, 1.0])}
  assert lines_by_label(per_env) == {"rl reward_mean/code": ([1, 2, 3, 4], [s / 8 for s in range(1, 5)]),
                                     "rl reward_mean/math": ([2, 3, 4], [-s / 8 for s in range(2, 5)])}
