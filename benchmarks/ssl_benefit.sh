#!/usr/bin/env bash
# Does SimCLR pretraining pay off? (issue: Self-supervised pretraining)
# 1. pretrain on figshare (labels unused), 2. linear probe / k-NN of frozen embeddings, SimCLR
# vs random init, 3. fine-tune the two-step classifier with 10 / 25 / 100 % of the training
# patients' labels, SimCLR init vs scratch. Same patient split everywhere (families together).
# Usage: bash benchmarks/ssl_benefit.sh [DATA_ROOT] [OUT]   (CPU-sized configuration)
set -euo pipefail
DATA=${1:-../shared/data/figshare}
OUT=${2:-runs/bench/ssl_benefit}
SIZE=${SIZE:-128}
SSL_EPOCHS=${SSL_EPOCHS:-15}
FT_EPOCHS=${FT_EPOCHS:-10}
MRI=.venv/bin/mritumor
mkdir -p "$OUT"
if [ ! -f "$OUT/ssl/simclr_pretrain.pt" ]; then
  $MRI -q pretrain --data_root "$DATA" --outdir "$OUT/ssl" --encoder mobilenet_v2 --projection_dim 128 \
    --temperature 0.5 --epochs "$SSL_EPOCHS" --batch_size 64 --lr 1e-3 --image_size "$SIZE" --seed 0
fi
SPLIT="$OUT/ssl/split.json"
for frac in 0.1 0.25 1.0; do
  for init in simclr random; do
    ckpt=$([ "$init" = simclr ] && echo "$OUT/ssl/simclr_pretrain.pt" || echo random)
    $MRI -q evaluate-ssl --ckpt "$ckpt" --encoder mobilenet_v2 --image_size "$SIZE" --data_root "$DATA" \
      --split_file "$SPLIT" --label_fraction "$frac" --outdir "$OUT/probe_${init}_${frac}"
  done
done
for frac in 0.1 0.25 1.0; do
  for init in simclr scratch; do
    extra=()
    [ "$init" = simclr ] && extra=(--ssl_ckpt "$OUT/ssl/simclr_pretrain.pt")
    /usr/bin/time -f "%e s" $MRI -q train-hierarchical --data_root "$DATA" --outdir "$OUT/finetune_${init}_${frac}" \
      --epochs "$FT_EPOCHS" --batch_size 2 --bag_size 8 --bag_policy uniform --backbone mobilenet_v2 \
      --image_size "$SIZE" --lr 3e-4 --patience 4 --split_file "$SPLIT" --label_fraction "$frac" \
      --seed 0 --n_boot 1000 "${extra[@]}"
  done
done
.venv/bin/python benchmarks/summarise_ssl_benefit.py "$OUT"
