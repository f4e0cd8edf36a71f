#!/usr/bin/env bash
# Two-step classifier, 5-fold patient cross-validation (issue: Hierarchical two-step classifier).
# Compares mean vs attention pooling, and SimCLR init vs scratch (attention pooling).
# CPU-sized configuration by default (small_cnn at 64 px); the seed's full configuration is
#   BACKBONE=mobilenet_v2 SIZE=224 EPOCHS=40 bash benchmarks/hierarchical_cv.sh DATA OUT
# Usage: bash benchmarks/hierarchical_cv.sh [DATA_ROOT] [OUT]
set -euo pipefail
DATA=${1:-../shared/data/lgg}
OUT=${2:-runs/bench/hierarchical_cv_$(basename "$DATA")}
BACKBONE=${BACKBONE:-small_cnn}
SIZE=${SIZE:-64}
EPOCHS=${EPOCHS:-15}
SSL_EPOCHS=${SSL_EPOCHS:-10}
MRI=.venv/bin/mritumor
mkdir -p "$OUT"
# SimCLR sees every slice without labels (test folds included, labels never read).
if [ ! -f "$OUT/ssl/simclr_pretrain.pt" ]; then
  $MRI -q pretrain --data_root "$DATA" --outdir "$OUT/ssl" --encoder "$BACKBONE" --image_size "$SIZE" \
    --epochs "$SSL_EPOCHS" --batch_size 64 --lr 1e-3 --val_frac 0.1 --test_frac 0.05 --seed 0
fi
run() {
  local name=$1; shift
  /usr/bin/time -f "$name: %e s" $MRI -q train-hierarchical --data_root "$DATA" --outdir "$OUT/$name" \
    --cv 5 --epochs "$EPOCHS" --batch_size 2 --bag_size 8 --bag_policy uniform --backbone "$BACKBONE" \
    --image_size "$SIZE" --lr 1e-3 --patience 5 --augment light --seed 0 --n_boot 1000 "$@"
}
run mean_scratch --pooling mean
run attention_scratch --pooling attention
run attention_ssl --pooling attention --ssl_ckpt "$OUT/ssl/simclr_pretrain.pt"
.venv/bin/python benchmarks/summarise_cv.py "$OUT"/*/cv_summary.json
