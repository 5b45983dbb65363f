"""Pretraining: code (plus general text at scale), 8k context, RoPE unscaled.

    python -m experiments.main --config=experiments/configs/pretrain.py:tiny --workdir=/tmp/cwm_pt
    python -m experiments.main --config=experiments/configs/pretrain.py:cwm_8b,data_dir=/data/cwm \\
        --workdir=gs://bucket/cwm_8b/pretrain

`tiny` trains on the toy corpus's program sources (`python -m data_pipelines.toy_corpus
--out=/tmp/cwm_quickstart/data` makes it) at 256 tokens; the large variants read
DATA_DIR/{code,text}/*.array_record (~30% code, TRAINING.md) at 8,192 tokens.
"""

from experiments.configs import common


def get_config(arg=None):
  variant, opt = common.parse_arg(arg)
  d = opt["data_dir"]
  if variant == "tiny":
    data = dict(tokenizer_path=f"{d}/tokenizer.model", seq_len=256, batch_size=16,
                sources=[common.source("code", f"{d}/code.jsonl", "text")],
                eval_sources=[common.source("code_heldout", f"{d}/code_heldout.jsonl", "text")])
  else:
    data = dict(tokenizer_path=f"{d}/tokenizer.model", seq_len=8192,
                batch_size={"cwm_1b": 256, "cwm_8b": 512, "cwm_32b": 1024}[variant],
                sources=[common.source("code", f"{d}/code/*.array_record", "text", 0.3),
                         common.source("text", f"{d}/text/*.array_record", "text", 0.7)],
                eval_sources=[common.source("code_heldout", f"{d}/code_heldout/*.array_record",
                                            "text")],
                num_workers=8)
  return common.experiment("pretrain", variant, common.model_config(variant, max_seq_len=8192),
                           data)
