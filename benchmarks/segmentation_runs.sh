#!/usr/bin/env bash
# Segmentation against the field's reference tool (issue: nnU-Net side by side, bf16 on CPU,
# gliomas): the runs behind RESULTS' sections of that name, one after another (2 cores).
# Usage: bash benchmarks/segmentation_runs.sh WHAT [OUT]
#   bf16    the cpu recipe's variant F on figshare under bf16 autocast (--precision bf16), on the
#           split of OUT/F_base (the float32 run, external_runs.sh base), for the paired compare
#   bf16_long the same with 24 epochs instead of 12: bf16's time saved spent on epochs, the
#           ingredient the ablation found worth most (6 → 12 epochs: +6.9 points of Dice)
#   tversky the recipe since bf16_long (24 epochs, bf16) with the Tversky + CE mask loss, for
#           gliomas (under-segmented): compared on validation patients with bf16_long
#   SEED=S (environment, default 0): bf16_long and tversky with training seed S (same split),
#           into F_bf16_e24_sS / F_bf16_e24_tversky_sS: the seed-to-seed spread on validation
#   nnunet  nnU-Net v2 (bench_nnunet.py) on OUT/F_base's split within the cpu recipe's budget
#           (43 minutes for planning + training), predicted with its default mirroring, scored
#           beside OUT/F_base
set -euo pipefail
WHAT=${1:?bf16|bf16_long|tversky|nnunet}
OUT=${2:-runs/x}
source "$(dirname "$0")/runs_common.sh"
SEED=${SEED:-0}
SUFFIX=$([ "$SEED" = 0 ] && echo "" || echo "_s$SEED")
case "$WHAT" in
  bf16)
    timed F_bf16 "$MRI" -q train-multitask --recipe cpu --variant F --seed 0 --precision bf16 \
      --data_root "$SHARED/figshare" --split_file "$OUT/F_base/split.json" --outdir "$OUT/F_bf16" ;;
  bf16_long)
    timed "F_bf16_e24$SUFFIX" "$MRI" -q train-multitask --recipe cpu --variant F --seed "$SEED" \
      --precision bf16 --epochs 24 --data_root "$SHARED/figshare" \
      --split_file "$OUT/F_base/split.json" --outdir "$OUT/F_bf16_e24$SUFFIX" ;;
  tversky)
    timed "F_bf16_e24_tversky$SUFFIX" "$MRI" -q train-multitask --recipe cpu --variant F \
      --seed "$SEED" --precision bf16 --epochs 24 --seg_loss tversky_ce --data_root "$SHARED/figshare" \
      --split_file "$OUT/F_base/split.json" --outdir "$OUT/F_bf16_e24_tversky$SUFFIX" ;;
  nnunet)
    W="$OUT/nnunet_figshare"
    timed nnunet_convert "$PY" benchmarks/bench_nnunet.py convert --workdir "$W" \
      --data_root "$SHARED/figshare" --split "$OUT/F_base/split.json"
    timed nnunet_train "$PY" benchmarks/bench_nnunet.py train --workdir "$W" --device cpu --threads 2 \
      --augment_processes 1 --time_budget_min 43 --iterations_per_epoch 5 --no_final_validation
    timed nnunet_predict "$PY" benchmarks/bench_nnunet.py predict --workdir "$W" --device cpu --threads 2
    timed nnunet_score "$PY" benchmarks/bench_nnunet.py score --workdir "$W" --mritumor_run "$OUT/F_base" ;;
esac
