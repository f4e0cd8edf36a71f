"""Recipe exploration on validation patients only (issue: Accurate models): the project's
multi-task network, mask loss, batched augmentation, warm-up + cosine schedule and weight
average, in a plain loop without Lightning, on the fixed figshare split (127 train / 31 val
patients; the 29 test patients are never loaded). Every ``--eval_every`` epochs it prints the
validation Dice (slice mean, thresholded logits) per tumour type and the slice type accuracy;
``--train_eval`` adds the same on 600 training slices without augmentation (fit vs
generalisation). It is for choosing a recipe's values quickly; the recipe's figures in
RESULTS.md come from ``mritumor train-multitask --recipe``.

Usage: python benchmarks/explore_multitask.py --size 192 --epochs 12 --variant F --seg_weight 2
"""

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from mritumor.data.loading.datasets import rows_of_patients
from mritumor.data.loading.fast_path import batch_augment
from mritumor.data.loading.prepare import prepare_data
from mritumor.losses import segmentation_loss
from mritumor.models.multitask import build_multitask_model
from mritumor.training import ema_with_warmup, warmup_cosine

p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=128)
p.add_argument("--backbone", default="resnet18")
p.add_argument("--decoder", default="unet")
p.add_argument("--variant", default="F")
p.add_argument("--epochs", type=int, default=8)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--wd", type=float, default=1e-4)
p.add_argument("--warmup", type=int, default=1)
p.add_argument("--ema", type=float, default=0.99)
p.add_argument("--augment", default="light")
p.add_argument("--seg_loss", default="dice_ce")
p.add_argument("--seg_weight", type=float, default=1.0)
p.add_argument("--eval_every", type=int, default=2)
p.add_argument("--train_eval", action="store_true")
p.add_argument("--out", default=None)
p.add_argument("--ssl_ckpt", default=None)
p.add_argument("--cls_weight", type=float, default=1.0)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--data", default="../shared/data/figshare")
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)

data = prepare_data(args.data, image_size=args.size, progress=False)
labels = data.labels
table = data.cache.catalog.table
types = np.array([labels.type_index(t) for t in table["tumor_type"]])


def tensors(part):
    rows = np.asarray(rows_of_patients(data.cache, data.split.part(part)))
    return (
        torch.as_tensor(np.asarray(data.cache.images[rows])).float(),
        torch.as_tensor(np.asarray(data.cache.masks[rows])),
        torch.as_tensor(types[rows]),
    )


train_x, train_m, train_t = tensors("train")
val_x, val_m, val_t = tensors("val")
print(f"train {len(train_x)} val {len(val_x)} types {labels.types}", flush=True)

model = build_multitask_model(
    args.variant,
    len(labels.types),
    args.backbone,
    train_x.shape[1],
    args.size,
    decoder=args.decoder,
)
if args.ssl_ckpt:
    from mritumor.models.simclr import load_ssl_encoder

    load_ssl_encoder(model.encoder, args.ssl_ckpt)
model = model.to(memory_format=torch.channels_last)
ema = (
    torch.optim.swa_utils.AveragedModel(model, avg_fn=ema_with_warmup(args.ema), use_buffers=True)
    if args.ema > 0
    else None
)
opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
steps_per_epoch = len(train_x) // args.batch
sched = warmup_cosine(opt, args.epochs, args.warmup)
aug = batch_augment(args.augment, args.size)
counts = np.bincount(train_t.numpy(), minlength=len(labels.types))
cw = torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)


@torch.no_grad()
def evaluate(net, x, m, t):
    net.eval()
    dices, correct = [], []
    for i in range(0, len(x), 64):
        out = net(x[i : i + 64].contiguous(memory_format=torch.channels_last))
        if "mask_logits" in out:
            pred = out["mask_logits"] > 0
            tgt = m[i : i + 64].bool()
            inter = (pred & tgt).flatten(1).sum(1).float()
            s = (pred.flatten(1).sum(1) + tgt.flatten(1).sum(1)).float()
            dices.append(torch.where(s > 0, 2 * inter / s.clamp(min=1), torch.ones_like(s)))
        if "class_logits" in out:
            correct.append((out["class_logits"].argmax(1) == t[i : i + 64]).float())
    res = {}
    if dices:
        d = torch.cat(dices)
        res["dice"] = round(d.mean().item(), 4)
        for k, name in enumerate(labels.types):
            res[f"dice_{name[:4]}"] = round(d[t == k].mean().item(), 4)
    if correct:
        res["acc"] = round(torch.cat(correct).mean().item(), 4)
    return res


history = []
start = time.time()
for epoch in range(args.epochs):
    model.train()
    order = torch.randperm(len(train_x))
    total = 0.0
    for b in range(steps_per_epoch):
        idx = order[b * args.batch : (b + 1) * args.batch]
        x, m = train_x[idx], train_m[idx]
        if aug is not None:
            x, m = aug(x, m)
        x = x.contiguous(memory_format=torch.channels_last)
        out = model(x)
        loss = 0.0
        if "mask_logits" in out:
            loss = loss + args.seg_weight * segmentation_loss(
                out["mask_logits"].float(), m, args.seg_loss
            )
        if "class_logits" in out:
            loss = loss + args.cls_weight * F.cross_entropy(
                out["class_logits"], train_t[idx], weight=cw
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update_parameters(model)
        total += float(loss.detach())
    sched.step()
    row = {
        "epoch": epoch,
        "loss": round(total / steps_per_epoch, 4),
        "t": round(time.time() - start),
    }
    if (epoch + 1) % args.eval_every == 0 or epoch == args.epochs - 1:
        net = ema.module if ema is not None else model
        row.update(evaluate(net, val_x, val_m, val_t))
    print(json.dumps(row), flush=True)
    history.append(row)
if args.train_eval:
    net = ema.module if ema is not None else model
    print("train(no aug):", json.dumps(evaluate(net, train_x[:600], train_m[:600], train_t[:600])))
if args.out:
    torch.save((ema.module if ema is not None else model).state_dict(), args.out)
