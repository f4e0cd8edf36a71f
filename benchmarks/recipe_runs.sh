#!/usr/bin/env bash
# The `cpu` recipe's runs for benchmarks/RESULTS.md (issue: Accurate models), one after another
# (2 cores: never two at once). Each run prints its wall time and peak RSS.
# Usage: bash benchmarks/recipe_runs.sh WHAT [FIGSHARE_ROOT] [OUT] [LGG_ROOT]
#   WHAT: best   variant F with the recipe (figshare)
#         a      variant A with the U-Net and with the FCN head, everything else the recipe's
#         ablate one recipe ingredient changed per run (variant F): decoder, image size,
#                epochs, augmentation, mask loss (rows for RECIPE=cpu or RECIPE=cpu-quick)
#         lgg    variant F on LGG (tumour-slice Dice; at LGG's own 128 px)
#         cv     5-fold patient-family CV of variant F's classification (RECIPE=cpu-quick to fit)
set -euo pipefail
WHAT=${1:?best|a|ablate|lgg|cv}
DATA=${2:-../shared/data/figshare}
OUT=${3:-runs/bench/recipes}
LGG=${4:-../shared/data/lgg}
RECIPE=${RECIPE:-cpu}
MRI=${MRI:-.venv/bin/mritumor}
run() {  # run NAME DATA FLAGS...
  local name=$1 data=$2
  shift 2
  /usr/bin/time -f "$name: %e s wall, peak RSS %M KB" \
    "$MRI" -q train-multitask --recipe "$RECIPE" --data_root "$data" --outdir "$OUT/$name" \
    --seed 0 "$@"
}
case "$WHAT" in
  best) run F "$DATA" --variant F ;;
  a)
    run A_unet "$DATA" --variant A --decoder unet
    run A_fcn "$DATA" --variant A --decoder fcn
    ;;
  ablate)  # the base row is `best`; each row changes one ingredient of the recipe
    run F_fcn "$DATA" --variant F --decoder fcn
    run F_no_augment "$DATA" --variant F --augment none
    run F_dice_focal "$DATA" --variant F --seg_loss dice_focal
    run F_tversky "$DATA" --variant F --seg_loss tversky_ce
    if [ "$RECIPE" = cpu ]; then
      run F_size128 "$DATA" --variant F --image_size 128
      run F_half_epochs "$DATA" --variant F --epochs 6
      run F_seg_weight1 "$DATA" --variant F --seg_weight 1
      run F_no_ema "$DATA" --variant F --ema_decay 0
    else
      run F_size128 "$DATA" --variant F --image_size 128
      run F_double_epochs "$DATA" --variant F --epochs 10
      run F_ema "$DATA" --variant F --ema_decay 0.99
    fi
    ;;
  lgg) run lgg_F "$LGG" --variant F --image_size 128 ;;  # LGG's slices are 128 px
  cv)
    "$MRI" -q data split --data_root "$DATA" --out "$OUT/cv/split.json" --cv 5 --seed 0
    for fold in 0 1 2 3 4; do
      run "cv/fold$fold" "$DATA" --variant F --split_file "$OUT/cv/split_fold$fold.json"
    done
    ;;
  *) echo "unknown WHAT $WHAT" >&2; exit 2 ;;
esac
