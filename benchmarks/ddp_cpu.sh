#!/usr/bin/env bash
# The same SimCLR run with 1 and 2 DDP processes on CPU (gloo), and the exact commands for GPUs.
# Prints wall time and peak memory of each; the checkpoint's metadata records the world size.
# Usage: bash benchmarks/ddp_cpu.sh [DATA_ROOT] [OUT]
#   the same on GPUs: ACCELERATOR=gpu DEVICES="1 8" bash benchmarks/ddp_cpu.sh
#   one GPU:    mritumor pretrain ... --accelerator gpu --devices 1
#   many GPUs:  mritumor pretrain ... --accelerator gpu --devices 8            (one node, DDP)
#   many nodes: srun mritumor pretrain ... --accelerator gpu --devices 8 --num_nodes 4  (SLURM)
set -euo pipefail
DATA=${1:-../shared/data/figshare}
OUT=${2:-runs/bench/ddp_cpu}
MRI=.venv/bin/mritumor
common=(--data_root "$DATA" --encoder small_cnn --image_size 64 --epochs 3 --batch_size 64
  --lr 1e-3 --seed 0 --accelerator "${ACCELERATOR:-cpu}")
for n in ${DEVICES:-1 2}; do
  /usr/bin/time -f "devices=$n: %e s wall, peak RSS %M KB (largest process)" \
    $MRI -q pretrain "${common[@]}" --outdir "$OUT/devices_$n" --devices "$n"
  .venv/bin/python -c "
import torch, json
m = torch.load('$OUT/devices_$n/simclr_pretrain.pt', weights_only=True)['metadata']
print(json.dumps({'devices': $n, 'world_size': m['training'].get('world_size'),
                  'best_val_loss': m['best_val_loss'], 'epochs_run': m.get('epochs_run')}))"
done
