#!/usr/bin/env bash
# The full training loop (experiments.main: grain pipeline from ArrayRecord shards,
# metrics, async Orbax checkpoint) against the bare jitted train step
# (benchmarks/train_mfu.py, synthetic packed tokens) on the same model, batch and
# sequence length, in one go on one machine. The gap is the loop's overhead.
#
#   bash benchmarks/loop_vs_step.sh DATA_DIR [MODEL=cwm_1b] [SEQ=8192] [BATCH=8] [STEPS=30]
#
# DATA_DIR holds tokenizer.model and code/, text/, code_heldout/ *.array_record
# shards (experiments/configs/pretrain.py's layout for the large variants).
set -euo pipefail
DATA=$1; MODEL=${2:-cwm_1b}; SEQ=${3:-8192}; BATCH=${4:-8}; STEPS=${5:-30}
WORK=${WORK:-/tmp/loop_vs_step}
rm -rf "$WORK"
echo "== bare train step (train_mfu, packed synthetic rows)"
python3 -m benchmarks.train_mfu --model="$MODEL" --seq="$SEQ" --batch="$BATCH" --steps=8 \
    --warmup=2 --remat=dots --packed
echo "== experiments.main pretrain:$MODEL ($STEPS steps, checkpoint at the end)"
python3 -m experiments.main --config="experiments/configs/pretrain.py:$MODEL,data_dir=$DATA" \
    --workdir="$WORK" --config.data.seq_len="$SEQ" --config.data.batch_size="$BATCH" \
    --config.train.steps="$STEPS" --config.train.log_every=5 --config.train.eval_every=0 \
    --config.train.eval_batches=2 --config.train.checkpoint_every="$STEPS" \
    --config.data.num_workers=4 --config.model.remat=dots
python3 - "$WORK" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
timed = [r for r in rows if "tokens_per_s" in r][1:]  # the first window includes compilation
print("step  loss    tokens/s   MFU")
for r in timed:
  mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
  print(f"{r['step']:>4}  {r['loss']:.3f}  {r['tokens_per_s']:>9,.0f}  {mfu}")
print("loop mean tokens/s (after the first window):",
      round(sum(r["tokens_per_s"] for r in timed) / max(len(timed), 1)))
print("formula:", rows[-1].get("mfu_formula"))
PY
