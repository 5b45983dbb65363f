"""Supervised fine-tuning: chat-formatted data, loss on assistant turns only
(FORMATS.md), with a midtraining replay share; starts from a midtraining checkpoint.

    python -m experiments.main --config=experiments/configs/sft.py:tiny \\
        --workdir=/tmp/cwm_sft --config.init_from=/tmp/cwm_mt
    python -m experiments.main --config=experiments/configs/sft.py:cwm_8b,data_dir=/data/cwm \\
        --workdir=gs://bucket/cwm_8b/sft --config.init_from=gs://bucket/cwm_8b/midtrain

A fresh optimizer (new schedule); `tiny` uses the toy corpus's "what does f(x)
return" dialogs with 30% trace replay at 1,024 tokens, large variants 32,768 tokens.
"""

from experiments.configs import common


def get_config(arg=None):
  variant, opt = common.parse_arg(arg)
  d = opt["data_dir"]
  model = common.long_context_model(variant)
  if variant == "tiny":
    data = dict(tokenizer_path=f"{d}/tokenizer.model", seq_len=1024, batch_size=8,
                sources=[common.source("chat", f"{d}/chat.jsonl", "chat", 0.7),
                         common.source("replay", f"{d}/traces.jsonl", "trace", 0.3)],
                eval_sources=[common.source("chat_heldout", f"{d}/chat_heldout.jsonl", "chat")])
  else:
    data = dict(tokenizer_path=f"{d}/tokenizer.model", seq_len=32768,
                batch_size={"cwm_1b": 32, "cwm_8b": 64, "cwm_32b": 128}[variant],
                sources=[common.source("sft", f"{d}/sft/*.array_record", "chat", 0.5),
                         common.source("agentic", f"{d}/sft_trajectories/*.array_record",
                                       "trajectory", 0.2),
                         common.source("replay", f"{d}/traces/*.array_record", "trace", 0.3)],
                eval_sources=[common.source("sft_heldout", f"{d}/sft_heldout/*.array_record",
                                            "chat")],
                num_workers=8)
  return common.experiment("sft", variant, model, data, context=1 if variant == "tiny" else 2)
