"""The experiment entry point: one stage (pretrain, midtrain, sft, rl) or an evaluation.

    python -m experiments.main --config=experiments/configs/pretrain.py:tiny --workdir=/tmp/pt
    python -m experiments.main --config=experiments/configs/midtrain.py:tiny \\
        --workdir=/tmp/mt --config.init_from=/tmp/pt
    python -m experiments.main --config=experiments/configs/eval.py:tiny --workdir=/tmp/ev \\
        --config.checkpoint=/tmp/mt

`--config.a.b=value` overrides any field. Re-running the same command in the
same workdir resumes from its latest checkpoint. Config mistakes (unknown keys,
wrong types, bad values, missing files, a workdir of another experiment) end
with one line naming the key, not a traceback.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cwm_jax.host_memory import use_tcmalloc

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and config go here.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str) -> dict:
  """Validates `config` and runs it in `workdir`; returns the run's summary."""
  from cwm_jax.train.config import experiment_config  # after flag parsing
  stage = config.get("stage")
  if stage == "eval":
    from cwm_jax.evals.runner import run_from_config
    return run_from_config(config, workdir)
  from cwm_jax.sharding.distributed import initialize_distributed
  initialize_distributed()
  cfg = experiment_config(config)
  logging.info("%s (%s): %s", cfg.name, cfg.stage, workdir)
  if cfg.stage == "rl":
    from cwm_jax.rl.run import train_rl
    return train_rl(cfg, workdir)
  from cwm_jax.train.loop import train
  return train(cfg, workdir)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  use_tcmalloc()  # may re-execute this command, so first (cwm_jax/host_memory.py)
  from cwm_jax.train.config import ConfigError
  from cwm_jax.train.logs import quiet_library_logs
  quiet_library_logs()
  try:
    summary = run(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    sys.exit(f"error: {e}")
  print(json.dumps(summary, default=str))


def parse_flags(argv):
  """absl flag parsing, with a bad `--config.x=...` (unknown key, wrong type, bad
  config file) reported in one line instead of ml_collections' traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e)
    if "Traceback (most recent call last)" in message:  # a config file's own error
      lines = [line.strip() for line in message.splitlines() if line.strip()]
      message = message.split("Traceback")[0].strip() + " " + lines[-1]
    message = message.replace("\\n", " ").replace("\\'", "'").replace("\n", " ").strip("'\" ")
    if isinstance(e, (AttributeError, KeyError)):
      message = "unknown config key: " + message.replace("'", "")
    sys.exit(f"error: {message}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
