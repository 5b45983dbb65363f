"""Midtraining: the world-model data mix at long context, RoPE scaling switched on,
continuing the pretraining run (its optimizer state and learning-rate schedule).

    python -m experiments.main --config=experiments/configs/midtrain.py:tiny \\
        --workdir=/tmp/cwm_mt --config.init_from=/tmp/cwm_pt
    python -m experiments.main --config=experiments/configs/midtrain.py:cwm_8b,data_dir=/data/cwm \\
        --workdir=gs://bucket/cwm_8b/midtrain --config.init_from=gs://bucket/cwm_8b/pretrain

Mix (TRAINING.md): 30% code-world-model data (execution traces; trajectories and PR
data at scale), 40% code, 30% pretraining replay. `tiny` uses the toy corpus's traces
and program sources at 1,024 tokens; large variants 131,072 tokens with the
sequence split over the `context` mesh axis.
"""

from experiments.configs import common


def get_config(arg=None):
  variant, opt = common.parse_arg(arg)
  d = opt["data_dir"]
  model = common.long_context_model(variant)
  if variant == "tiny":
    data = dict(tokenizer_path=f"{d}/tokenizer.model", seq_len=1024, batch_size=2,
                sources=[common.source("traces", f"{d}/traces.jsonl", "trace", 0.6),
                         common.source("code", f"{d}/code.jsonl", "text", 0.4)],
                eval_sources=[common.source("traces_heldout", f"{d}/traces_heldout.jsonl",
                                            "trace")])
    context = 1
  else:
    data = dict(tokenizer_path=f"{d}/tokenizer.model", seq_len=131072,
                batch_size={"cwm_1b": 16, "cwm_8b": 32, "cwm_32b": 32}[variant],
                sources=[common.source("traces", f"{d}/traces/*.array_record", "trace", 0.2),
                         common.source("trajectories", f"{d}/trajectories/*.array_record",
                                       "trajectory", 0.1),
                         common.source("code", f"{d}/code/*.array_record", "text", 0.4),
                         common.source("replay", f"{d}/text/*.array_record", "text", 0.3)],
                eval_sources=[common.source("traces_heldout",
                                            f"{d}/traces_heldout/*.array_record", "trace")],
                num_workers=8)
    context = 8
  return common.experiment("midtrain", variant, model, data, context=context,
                           init_optimizer_state=True)
