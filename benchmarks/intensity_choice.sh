#!/usr/bin/env bash
# Which intensity standardisation (issue: Know when not to answer, robustness)? The same
# cpu-quick variant-F run with --intensity percentile and foreground, then bench_shift on the
# VALIDATION patients (never the test split) at severity 3 and on LGG's T1-CE / FLAIR slices
# (other scanners). Usage: bash benchmarks/intensity_choice.sh [FIGSHARE] [OUT] [LGG]
set -euo pipefail
DATA=${1:-../shared/data/figshare}
OUT=${2:-runs/bench/intensity}
LGG=${3:-../shared/data/lgg}
RECIPE=${RECIPE:-cpu-quick}
for method in percentile foreground; do
  if [ ! -f "$OUT/$method/test_metrics.json" ]; then
    /usr/bin/time -f "$method: %e s wall, peak RSS %M KB" .venv/bin/mritumor -q train-multitask \
      --recipe "$RECIPE" --variant F --data_root "$DATA" --outdir "$OUT/$method" --seed 0 \
      --intensity "$method"
  fi
  .venv/bin/python benchmarks/bench_shift.py --checkpoint "$OUT/$method/best.pt" --part val \
    --severities 3 --figshare "$DATA" --lgg "$LGG" --out "$OUT/$method/shift_val.json"
done
