"""Loss curves of one or more training workdirs, as a PNG.

    python -m experiments.plot /runs/pretrain /runs/midtrain --out=/runs/loss.png
    python -m experiments.plot /runs/a /runs/b --out=ab.png --metric=loss --x=tokens
    python -m experiments.plot /runs/rl --out=reward.png --metric='reward_mean,reward_mean/*'

One panel per metric; in each, one line per workdir (labelled by the
directory's name) for the metric itself and, for a training metric such as
`loss`, dashed lines for its held-out counterparts (`eval_loss`, `eval/loss`,
...) where `metrics.jsonl` has them. A metric with `*` is a pattern: one line per
matching metric (e.g. `reward_mean/*`: RL's reward per environment). `--x=tokens` puts training tokens on the
x axis: a logged cumulative `tokens` metric if there is one, otherwise
step x tokens per step (batch_size x seq_len from the workdir's config.json,
or tokens_per_s / steps_per_s from the logged rates).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import sys
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on clusters or in CI
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend on purpose)
from absl import app, flags  # noqa: E402

from cwm_jax.train.metrics import METRICS_FILE, read_metrics  # noqa: E402

X_AXES = ("step", "tokens")


def eval_keys(metric: str, keys) -> list[str]:
  """The held-out versions of `metric` among `keys` (eval_loss, eval/loss, eval/code/loss)."""
  if "eval" in metric:
    return []
  return sorted(k for k in keys if k != metric and "eval" in k
                and (k.endswith("_" + metric) or k.endswith("/" + metric)))


def tokens_per_step(workdir: str, rows: list[dict]) -> Optional[float]:
  """batch_size * seq_len from the workdir's config.json, else from the logged rates."""
  config = os.path.join(workdir, "config.json")
  if os.path.exists(config):
    with open(config) as f:
      data = json.load(f).get("data", {})
    if isinstance(data.get("batch_size"), int) and isinstance(data.get("seq_len"), int):
      return float(data["batch_size"] * data["seq_len"])
  for row in rows:
    tps, sps = row.get("tokens_per_s"), row.get("steps_per_s")
    if isinstance(tps, (int, float)) and isinstance(sps, (int, float)) and sps > 0:
      return tps / sps
  return None


def _x_values(workdir: str, rows: list[dict], x: str) -> list[float]:
  if x == "step":
    return [row["step"] for row in rows]
  if all(isinstance(row.get("tokens"), (int, float)) for row in rows):
    return [row["tokens"] for row in rows]
  per_step = tokens_per_step(workdir, rows)
  if per_step is None:
    raise ValueError(f"--x=tokens: cannot tell the tokens per step of {workdir!r} (no 'tokens' "
                     "metric, no data.batch_size/seq_len in config.json, no logged rates); "
                     "use --x=step.")
  return [row["step"] * per_step for row in rows]


def _series(rows: list[dict], xs: list[float], key: str) -> tuple[list[float], list[float]]:
  points = [(x, row[key]) for x, row in zip(xs, rows)
            if isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool)
            and math.isfinite(row[key])]
  return [p[0] for p in points], [p[1] for p in points]


def plot_metrics(workdirs: Sequence[str], out: str, metrics: Sequence[str] = ("loss",),
                 x: str = "step") -> str:
  """Writes the curves of `metrics` for `workdirs` to the PNG `out`; returns `out`."""
  if x not in X_AXES:
    raise ValueError(f"plot_metrics: x={x!r}, expected one of {X_AXES}.")
  if not workdirs:
    raise ValueError("plot_metrics: pass at least one workdir.")
  if isinstance(metrics, str):
    metrics = (metrics,)
  runs = []
  for workdir in workdirs:
    if not os.path.exists(os.path.join(workdir, METRICS_FILE)):
      raise FileNotFoundError(f"{workdir!r} has no {METRICS_FILE}: expected a training workdir "
                              "(python -m experiments.main ... --workdir=DIR writes one).")
    rows = read_metrics(workdir)
    label = os.path.basename(os.path.normpath(workdir))
    runs.append((label, rows, _x_values(workdir, rows, x)))
  fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 3.5 * len(metrics)), squeeze=False)
  for ax, metric in zip(axes[:, 0], metrics):
    drawn = 0
    for i, (label, rows, xs) in enumerate(runs):
      keys = set().union(*(row.keys() for row in rows)) if rows else set()
      if "*" in metric:  # a pattern: one line per matching metric, e.g. reward_mean/*
        lines = [(k, "-", f"C{(i + j) % 10}", f"{label} {k}")
                 for j, k in enumerate(sorted(fnmatch.filter(keys, metric)))]
      else:
        lines = [(k, "--" if k != metric else "-", f"C{i % 10}",
                  label if k == metric else f"{label} {k}")
                 for k in [metric] + eval_keys(metric, keys)]
      for key, style, color, name in lines:
        kx, ky = _series(rows, xs, key)
        if kx:
          ax.plot(kx, ky, style, color=color, marker="o" if style == "--" else None,
                  markersize=3, label=name)
          drawn += 1
    if not drawn:
      raise ValueError(f"plot_metrics: no workdir logged a finite {metric!r} "
                       f"({', '.join(label for label, _, _ in runs)}).")
    ax.set_xlabel("training tokens" if x == "tokens" else "step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=120, format="png")
  plt.close(fig)
  return out


_OUT = flags.DEFINE_string("out", None, "PNG file to write.")
_METRIC = flags.DEFINE_list("metric", ["loss"], "Metrics to plot, one panel each (comma-separated).")
_X = flags.DEFINE_enum("x", "step", X_AXES, "x axis: optimizer step or training tokens.")


def main(argv) -> None:
  workdirs = argv[1:]
  if not workdirs:
    raise app.UsageError("usage: python -m experiments.plot DIR [DIR ...] --out=FILE.png")
  if not _OUT.value:
    raise app.UsageError("--out=FILE.png is required.")
  try:
    print(plot_metrics(workdirs, _OUT.value, _METRIC.value, _X.value))
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"experiments.plot: {e}")


if __name__ == "__main__":
  app.run(main)
