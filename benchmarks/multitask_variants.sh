#!/usr/bin/env bash
# Multi-task variants A–G (seed 004) on one patient-level split (families together), then the
# best variant's Dice on LGG (issue: Multi-task segmentation + classification).
# CPU-sized configuration by default (a light encoder at 128 px); the seed's configuration is
#   BACKBONE=fcn_resnet50 SIZE=256 EPOCHS=30 BATCH=16 bash benchmarks/multitask_variants.sh
# Usage: bash benchmarks/multitask_variants.sh [FIGSHARE_ROOT] [OUT] [LGG_ROOT]
set -euo pipefail
DATA=${1:-../shared/data/figshare}
OUT=${2:-runs/bench/multitask}
LGG=${3:-../shared/data/lgg}
BACKBONE=${BACKBONE:-small_cnn}
SIZE=${SIZE:-128}
EPOCHS=${EPOCHS:-12}
BATCH=${BATCH:-32}
MRI=.venv/bin/mritumor
common=(--backbone "$BACKBONE" --image_size "$SIZE" --epochs "$EPOCHS" --batch_size "$BATCH"
  --lr 1e-3 --patience 4 --augment light --seed 0 --n_boot 1000)
/usr/bin/time -f "all variants: %e s, peak RSS %M KB" \
  $MRI -q train-multitask --data_root "$DATA" --outdir "$OUT/figshare" --variant all "${common[@]}"
cat "$OUT/figshare/comparison.md"
# best variant by Dice + accuracy on figshare, then its Dice on LGG (histological type as class)
BEST=$(.venv/bin/python -c "
import pandas as pd
t = pd.read_csv('$OUT/figshare/comparison.csv').dropna(subset=['dice', 'accuracy'])
print(t.loc[(t.dice + t.accuracy).idxmax(), 'variant'])")
echo "best variant on figshare: $BEST"
if [ -d "$LGG" ]; then
  /usr/bin/time -f "LGG variant $BEST: %e s" \
    $MRI -q train-multitask --data_root "$LGG" --outdir "$OUT/lgg_$BEST" --variant "$BEST" "${common[@]}"
fi
