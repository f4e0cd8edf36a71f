#!/usr/bin/env bash
# SimCLR init vs scratch at few labels, both arms trained to convergence, several seeds
# (issue: Accurate models, "SimCLR, converged"). One split for every run (the pretraining's,
# families together); each seed draws its own labelled patients (per type) and initial weights.
# No early stopping (the recipe's patience 0) and a longer schedule than the recipe's (EPOCHS,
# 60: with 13 labelled patients an epoch is 3 steps), best epoch by validation accuracy: by
# validation loss a scratch network's untrained first epoch (near-uniform output, loss ≈ ln 3)
# beats every later, over-confident one, so that arm "stopped" at epoch 0 (RESULTS). The
# summary prints every run's best epoch to show neither arm stops at its first.
# Usage: bash benchmarks/ssl_label_efficiency.sh [DATA_ROOT] [OUT]
#   RECIPE (cpu), SEEDS ("0 1 2"), FRACTION (0.1), EPOCHS (60), MONITOR (val_type_accuracy)
set -euo pipefail
DATA=${1:-../shared/data/figshare}
OUT=${2:-runs/bench/ssl_cpu}
RECIPE=${RECIPE:-cpu}
SEEDS=${SEEDS:-0 1 2}
FRACTION=${FRACTION:-0.1}
EPOCHS=${EPOCHS:-60}
MONITOR=${MONITOR:-val_type_accuracy}
MRI=${MRI:-.venv/bin/mritumor}
mkdir -p "$OUT"
if [ ! -f "$OUT/ssl/simclr_pretrain.pt" ]; then
  /usr/bin/time -f "pretrain: %e s wall, peak RSS %M KB" \
    "$MRI" -q pretrain --recipe "$RECIPE" --data_root "$DATA" --outdir "$OUT/ssl" --seed 0
fi
for seed in $SEEDS; do
  for init in simclr scratch; do
    name="finetune_${init}_${FRACTION}_e${EPOCHS}_seed${seed}"
    [ -f "$OUT/$name/test_metrics.json" ] && continue
    extra=()
    [ "$init" = simclr ] && extra=(--ssl_ckpt "$OUT/ssl/simclr_pretrain.pt")
    /usr/bin/time -f "$name: %e s wall, peak RSS %M KB" \
      "$MRI" -q train-hierarchical --recipe "$RECIPE" --data_root "$DATA" --outdir "$OUT/$name" \
      --split_file "$OUT/ssl/split.json" --label_fraction "$FRACTION" --seed "$seed" \
      --epochs "$EPOCHS" --monitor "$MONITOR" "${extra[@]}"
  done
done
.venv/bin/python benchmarks/summarise_ssl_seeds.py "$OUT" --fraction "$FRACTION" --epochs "$EPOCHS" --seeds $SEEDS
