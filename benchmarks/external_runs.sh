#!/usr/bin/env bash
# Models beyond their home source (issue: multi-source training, adaptation to a new site):
# the runs behind RESULTS' section of that name, one after another (2 cores).
# Usage: bash benchmarks/external_runs.sh WHAT [OUT]
#   base     the cpu recipe's variant F on figshare, 12 epochs in float32 (the model every
#            other row starts from; the recipe before it moved to 24 epochs in bf16)
#   site     the "new site": external_dev's T1-after-contrast images as a manifest under OUT
#            (no image is copied; the manifest points into ../shared/data/external_dev)
#   external bench_external.py on every external_dev image, not adapted (OUT/ext/base.json)
#   blocks   ood_blocks.py: which encoder resolutions the OOD score sums, chosen on figshare
#            validation slices and external_dev
#   adapt    mritumor adapt at each level against not adapting, scored on the site images
#            adaptation did not use (bench_external --exclude)
#   loso     leave-one-source-out over figshare, LGG (post-contrast) and external_dev (cpu-quick)
#   quick    the same budget on figshare alone, and bench_external of both models that never saw
#            external_dev (figshare alone; figshare + LGG = the loso fold holding external_dev out)
#   multi    the cpu recipe's variant F on figshare + LGG's post-contrast gliomas
#            (benchmarks/sources/figshare_lgg.yaml), then bench_external on external_dev
#   multi24  multi under the recipe as it is now (24 epochs, bf16 where the CPU has it), then
#            bench_external and adapt's no-AdaBN level from it
#   multi_shift multi with --augment shift, 12 epochs in bf16, then bench_external
#   abstained bench_external again on multi's and ssl's models, adapted or not (OUT/ext/abst_*),
#            for the 'abstained' figures (what predict --abstain does)
#   ssl      SimCLR (cpu recipe, 8 epochs, bf16 where native) on every figshare + LGG slice,
#            then multi's training from that encoder, bench_external, and adapt_multi's
#            no-AdaBN level from it
#   ssl_quick the same comparison at the cpu-quick budget: SimCLR (cpu-quick) on every figshare
#            + LGG slice; variant F on figshare + LGG from scratch and from that encoder;
#            bench_external of both
#   adapt_multi adapt's best labelled level (last stage, 20 per type, half held out, Mondrian
#            sets) starting from multi's two-source model instead of base, with and without
#            AdaBN first, scored like adapt (the same 40 images drawn and left out)
set -euo pipefail
WHAT=${1:?base|site|external|blocks|adapt|loso|quick|multi|multi24|multi_shift|ssl|ssl_quick|adapt_multi|abstained}
OUT=${2:-runs/x}
source "$(dirname "$0")/runs_common.sh"
# adapt_site MODEL NAME UNLABELLED: adapt's best labelled level (20 per type, last stage, half
# held out, Mondrian sets) from OUT/MODEL, then bench_external on the images it did not use
adapt_site() {
  timed "$2" "$MRI" -q adapt --checkpoint "$OUT/$1/best.pt" --site_root "$OUT/site_t1c/manifest.csv" \
    --unlabelled "$3" --labelled_per_class 20 --finetune last_stage --holdout_share 0.5 \
    --conformal_mondrian --outdir "$OUT/$2"
  "$PY" benchmarks/bench_external.py --checkpoint "$OUT/$2/best.pt" \
    --data_root "$SHARED/external_dev" --exclude "$OUT/$2/site_split.json" --out "$OUT/ext/$2.json"
}
# score_and_adapt MODEL NAME: bench_external of OUT/MODEL on every external_dev image, adapt's
# measured best level without AdaBN into OUT/NAME (adapt_site), and OUT/MODEL again on the images
# NAME did not use (the draw depends on the seed and the site only: the same 40 as adapt_multi)
score_and_adapt() {
  timed "external_$1" "$PY" benchmarks/bench_external.py --checkpoint "$OUT/$1/best.pt" \
    --data_root "$SHARED/external_dev" --out "$OUT/ext/$1.json"
  adapt_site "$1" "$2" none
  "$PY" benchmarks/bench_external.py --checkpoint "$OUT/$1/best.pt" --data_root "$SHARED/external_dev" \
    --exclude "$OUT/$2/site_split.json" --out "$OUT/ext/$1_excl_h05.json"
}
case "$WHAT" in
  base)
    # the recipe as it was until bf16 (12 epochs, float32): the model every adaptation row and
    # segmentation_runs.sh's float32 reference were measured with
    timed F_base "$MRI" -q train-multitask --recipe cpu --epochs 12 --precision 32 --variant F \
      --seed 0 --data_root "$SHARED/figshare" --outdir "$OUT/F_base" ;;
  site)
    mkdir -p "$OUT/site_t1c"
    "$PY" - "$SHARED/external_dev" "$OUT/site_t1c/manifest.csv" <<'PYEOF'
import sys
from pathlib import Path
import pandas as pd
root, out = Path(sys.argv[1]).resolve(), sys.argv[2]
table = pd.read_csv(root / "manifest.csv")
table = table[table["sequence"] == "T1C+"].copy()
table["image"] = [str(root / p) for p in table["image"]]
table["mask"] = None  # external_dev's few masks outline an undefined region
table.to_csv(out, index=False)
print(f"{len(table)} T1C+ images: {table['tumor_type'].value_counts().to_dict()}")
PYEOF
    ;;
  external)
    timed external "$PY" benchmarks/bench_external.py --checkpoint "$OUT/F_base/best.pt" \
      --data_root "$SHARED/external_dev" --out "$OUT/ext/base.json" ;;
  blocks)
    timed blocks "$PY" benchmarks/ood_blocks.py --checkpoint "$OUT/F_base/best.pt" \
      --data_root "$SHARED/figshare" --external "$SHARED/external_dev" --out "$OUT/ext/ood_blocks.json" ;;
  adapt)
    site="$OUT/site_t1c/manifest.csv"
    # unlabelled: AdaBN, then TENT, on every T1C+ site image (labels not read)
    for method in adabn tent; do
      timed "adapt_$method" "$MRI" -q adapt --checkpoint "$OUT/F_base/best.pt" --site_root "$site" \
        --unlabelled "$method" --outdir "$OUT/adapt_$method"
      "$PY" benchmarks/bench_external.py --checkpoint "$OUT/adapt_$method/best.pt" \
        --data_root "$SHARED/external_dev" --out "$OUT/ext/adapt_$method.json"
    done
    # 20 labelled images per known class (glioma, meningioma), taken out of the evaluation
    for level in head last_stage; do
      timed "adapt_20_$level" "$MRI" -q adapt --checkpoint "$OUT/F_base/best.pt" --site_root "$site" \
        --unlabelled adabn --labelled_per_class 20 --finetune "$level" --conformal_mondrian \
        --outdir "$OUT/adapt_20_$level"
      "$PY" benchmarks/bench_external.py --checkpoint "$OUT/adapt_20_$level/best.pt" \
        --data_root "$SHARED/external_dev" --exclude "$OUT/adapt_20_$level/site_split.json" \
        --out "$OUT/ext/adapt_20_$level.json"
    done
    # the last stage again with half the labelled images held out: 10 per class calibrate the
    # Mondrian (per-class) sets, which need at least 9 per class for 90 %
    timed adapt_20_last_stage_h05 "$MRI" -q adapt --checkpoint "$OUT/F_base/best.pt" --site_root "$site" \
      --unlabelled adabn --labelled_per_class 20 --finetune last_stage --holdout_share 0.5 \
      --conformal_mondrian --outdir "$OUT/adapt_20_last_stage_h05"
    for model in adapt_20_last_stage_h05 F_base; do
      "$PY" benchmarks/bench_external.py --checkpoint "$OUT/$model/best.pt" \
        --data_root "$SHARED/external_dev" --exclude "$OUT/adapt_20_last_stage_h05/site_split.json" \
        --out "$OUT/ext/${model}_excl_h05.json"
    done
    # the same images left out for the unadapted model, so the rows compare like with like
    "$PY" benchmarks/bench_external.py --checkpoint "$OUT/F_base/best.pt" \
      --data_root "$SHARED/external_dev" --exclude "$OUT/adapt_20_head/site_split.json" \
      --out "$OUT/ext/base_excl.json" ;;
  loso)
    timed loso "$MRI" -q train-multitask --recipe cpu-quick --variant F --seed 0 \
      --sources benchmarks/sources/loso.yaml --cv_by source \
      --outdir "$OUT/loso" ;;
  quick)
    timed quick_F "$MRI" -q train-multitask --recipe cpu-quick --variant F --seed 0 \
      --data_root "$SHARED/figshare" --outdir "$OUT/quick_F"
    for model in quick_F loso/external_dev; do
      "$PY" benchmarks/bench_external.py --checkpoint "$OUT/$model/best.pt" \
        --data_root "$SHARED/external_dev" --out "$OUT/ext/${model//\//_}.json"
    done ;;
  multi)
    # pinned, like base, to the recipe its rows were measured with (12 epochs, float32)
    timed F_multi "$MRI" -q train-multitask --recipe cpu --epochs 12 --precision 32 --variant F \
      --seed 0 --sources benchmarks/sources/figshare_lgg.yaml --outdir "$OUT/F_multi"
    timed external_multi "$PY" benchmarks/bench_external.py --checkpoint "$OUT/F_multi/best.pt" \
      --data_root "$SHARED/external_dev" --out "$OUT/ext/F_multi.json" ;;
  multi24)
    # the recipe as it is now (24 epochs, bf16 where native) on the same two sources
    timed F_multi24 "$MRI" -q train-multitask --recipe cpu --variant F --seed 0 \
      --sources benchmarks/sources/figshare_lgg.yaml --outdir "$OUT/F_multi24"
    score_and_adapt F_multi24 adapt_multi24_none_20_last_stage_h05 ;;
  multi_shift)
    # multi with --augment shift (intensity, contrast, blur, noise, bias field, all flips and
    # turns); 12 epochs like multi but in bf16 (the same accuracy as float32 on figshare:
    # RESULTS, "bf16 over a whole cpu recipe run") to fit beside the other runs
    timed F_multi_shift "$MRI" -q train-multitask --recipe cpu --epochs 12 --precision bf16 \
      --augment shift --variant F --seed 0 --sources benchmarks/sources/figshare_lgg.yaml \
      --outdir "$OUT/F_multi_shift"
    timed external_multi_shift "$PY" benchmarks/bench_external.py \
      --checkpoint "$OUT/F_multi_shift/best.pt" --data_root "$SHARED/external_dev" \
      --out "$OUT/ext/F_multi_shift.json" ;;
  ssl)
    # SimCLR in bf16 where the CPU has it (8 epochs); the fine-tuning pinned to multi's recipe
    # (12 epochs, float32), so that F_multi_ssl and F_multi differ by the encoder only
    timed ssl_multi "$MRI" -q pretrain --recipe cpu --epochs 8 --precision auto --seed 0 \
      --sources benchmarks/sources/figshare_lgg_unlabelled.yaml --outdir "$OUT/ssl_multi"
    timed F_multi_ssl "$MRI" -q train-multitask --recipe cpu --epochs 12 --precision 32 --variant F \
      --seed 0 --sources benchmarks/sources/figshare_lgg.yaml \
      --ssl_ckpt "$OUT/ssl_multi/simclr_pretrain.pt" --outdir "$OUT/F_multi_ssl"
    score_and_adapt F_multi_ssl adapt_multi_ssl_none_20_last_stage_h05 ;;
  ssl_quick)
    timed ssl_quick "$MRI" -q pretrain --recipe cpu-quick --seed 0 \
      --sources benchmarks/sources/figshare_lgg_unlabelled.yaml --outdir "$OUT/ssl_quick"
    timed quick_multi "$MRI" -q train-multitask --recipe cpu-quick --variant F --seed 0 \
      --sources benchmarks/sources/figshare_lgg.yaml --outdir "$OUT/quick_multi"
    timed quick_multi_ssl "$MRI" -q train-multitask --recipe cpu-quick --variant F --seed 0 \
      --sources benchmarks/sources/figshare_lgg.yaml --ssl_ckpt "$OUT/ssl_quick/simclr_pretrain.pt" \
      --outdir "$OUT/quick_multi_ssl"
    for model in quick_multi quick_multi_ssl; do
      "$PY" benchmarks/bench_external.py --checkpoint "$OUT/$model/best.pt" \
        --data_root "$SHARED/external_dev" --out "$OUT/ext/$model.json"
    done ;;
  adapt_multi)
    for unlabelled in adabn none; do
      adapt_site F_multi "adapt_multi_${unlabelled}_20_last_stage_h05" "$unlabelled"
    done
    # not adapted, the same images left out (the draw depends on the seed and the site only)
    "$PY" benchmarks/bench_external.py --checkpoint "$OUT/F_multi/best.pt" \
      --data_root "$SHARED/external_dev" --exclude "$OUT/adapt_multi_none_20_last_stage_h05/site_split.json" \
      --out "$OUT/ext/F_multi_excl_h05.json" ;;
  abstained)
    # bench_external again (its 'abstained' block is newer than these models' first scoring)
    for model in F_multi F_multi_ssl; do
      "$PY" benchmarks/bench_external.py --checkpoint "$OUT/$model/best.pt" \
        --data_root "$SHARED/external_dev" --out "$OUT/ext/abst_$model.json"
    done
    for model in adapt_multi_none_20_last_stage_h05 adapt_multi_ssl_none_20_last_stage_h05; do
      "$PY" benchmarks/bench_external.py --checkpoint "$OUT/$model/best.pt" \
        --data_root "$SHARED/external_dev" --exclude "$OUT/$model/site_split.json" \
        --out "$OUT/ext/abst_$model.json"
    done ;;
esac
