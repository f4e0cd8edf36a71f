"""``mritumor adapt``: a trained multi-task classifier (``train-multitask`` B–G) adapted to a new
site at three levels, each optional: (1) without labels, every BatchNorm layer's statistics
re-estimated on the site's images (AdaBN, Li et al. 2016), optionally after TENT (Wang et al.
2021: the class prediction's entropy minimised over the BatchNorm scales and shifts); (2) with
N labelled site patients per class, the classification layers (or also the encoder's last
stage) fine-tuned on part of them, early-stopped on the rest (held out), which then fit the
temperature; (3) the OOD detector and conformal sets re-fitted on those patients
(:func:`mritumor.inference.refit.slice_uncertainty`), so that coverage holds at the site.
Writes ``OUTDIR/best.pt`` (training's format plus an ``adaptation`` record),
``site_split.json`` (train = fine-tune, val = held out, test = every other site patient) and
``adapt_report.json``."""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mritumor import runfiles
from mritumor.checkpoints import run_metadata, save_checkpoint
from mritumor.config import AdaptConfig, save_resolved_config
from mritumor.data.loading.cache import Preprocessing, SliceCache
from mritumor.data.loading.datasets import SliceDataset, rows_of_patients
from mritumor.data.loading.splits import Split
from mritumor.data.reading import io
from mritumor.data.reading.readers import read_catalog
from mritumor.errors import DataError, MritumorError
from mritumor.evaluation.calibration import fit_temperature
from mritumor.evaluation.conformal import check_options
from mritumor.inference.loops import predict_slices
from mritumor.inference.refit import slice_uncertainty
from mritumor.models.loading import load_model
from mritumor.resources import check_writable

log = logging.getLogger(__name__)

UNLABELLED = ("adabn", "tent", "none")
FINETUNE = ("head", "last_stage", "none")
SITE_SPLIT, REPORT = runfiles.SITE_SPLIT, runfiles.ADAPT_REPORT
DIAGNOSED = 512  # about this many site slices get the label-free before/after summary
NOT_REFITTED = (
    "the OOD detector and the conformal sets were NOT re-fitted for the site: they are the "
    "source's, fitted with the unadapted network, so out-of-distribution flags and prediction "
    "sets of this checkpoint are not valid at the site ({why}); --labelled_per_class N re-fits "
    "them on labelled site patients"
)
NO_LABELS = (
    "no labelled site patients: without labels the detector's class statistics cannot be "
    "re-fitted, and a threshold set on the site's own images would call the site in "
    "distribution by construction"
)


def adapt_checkpoint(config: AdaptConfig) -> dict:
    """Run ``mritumor adapt``; returns the record stored in ``best.pt`` under ``adaptation``
    and written to ``adapt_report.json`` (with the output's path)."""
    outdir = check_writable(config.outdir, "--outdir")  # before reading any data
    source, target = Path(config.checkpoint), outdir / runfiles.BEST_CHECKPOINT
    if target.resolve() == source.resolve():
        raise MritumorError(f"--outdir would overwrite --checkpoint {source}: choose another")
    finetune = check_config(config)
    loaded, digest = load_model(source), sha256(source)
    if loaded.task != "multitask" or not loaded.classifies:
        raise MritumorError(
            f"{source} is {loaded.describe()}: adapt needs a train-multitask checkpoint with a "
            "classifier (variants B–G)"
        )
    fitted = (loaded.uncertainty or {}).get("conformal", {})
    coverage = config.coverage if config.coverage is not None else fitted.get("coverage", 0.9)
    method = config.conformal_method or fitted.get("method", "lac")
    check_options(coverage, method)
    catalog = read_catalog(config.site_root, config.format, config.strict)
    inputs = check_site_images(catalog, loaded.preprocessing, config.site_root)
    n, types = config.labelled_per_class, loaded.labels.types
    fit_ids, held_ids, ignored = (
        draw_labelled(catalog.table, types, n, config.holdout_share, config.seed) if n else ([], [], {})
    )  # fmt: skip
    cache = SliceCache.build(
        catalog, loaded.preprocessing, config.cache_dir, config.strict, progress=not config.quiet
    )
    missing = sorted(set(fit_ids + held_ids) - set(cache.catalog.patients))
    if missing:
        raise DataError(f"no slice of labelled patient(s) {missing[:5]} could be decoded")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    model = loaded.model.to(auto if config.device == "auto" else config.device).eval()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loader = _loader_factory(cache, loaded.labels, config.batch_size)
    every, fit_rows = np.arange(len(cache)), rows_of_patients(cache, fit_ids)
    held = loader(rows_of_patients(cache, held_ids))
    heldout, notes, temperature, state = {}, [], loaded.temperature, None
    if n:
        heldout["source"] = heldout_metrics(model, held, temperature)

    unlabelled: dict = {"method": config.unlabelled, "images": len(cache)}
    sample = loader(every[:: max(1, len(every) // DIAGNOSED)])  # a bounded label-free check
    if config.unlabelled != "none":
        unlabelled["site_before"] = site_predictions(model, sample)
        if config.unlabelled == "tent":
            shuffled = loader(every, shuffle=True, seed=config.seed, drop_last=True)
            unlabelled["tent"] = tent(model, shuffled, config.tent_steps, config.lr, config.quiet)
        adabn(model, loader(every, shuffle=True, seed=config.seed), config.quiet)
        unlabelled["site_after"] = site_predictions(model, sample)
        notes.append(
            "AdaBN/TENT used every site image without its label, the test part's too "
            "(transductive); no label of the test part was used"
        )
        if n:
            heldout["after_unlabelled"] = heldout_metrics(model, held, temperature)
    tuned: dict = {"mode": finetune}
    if n and finetune != "none":
        tuned |= fine_tune(model, finetune, loader(fit_rows, True, config.seed), held, config)
        heldout["after_finetune"] = heldout_metrics(model, held, temperature)
    if n:
        outputs = predict_slices(model, held)
        temperature = fit_temperature(outputs["class_logits"], torch.as_tensor(outputs["type_true"]))  # fmt: skip
        heldout["after_temperature"] = heldout_metrics(model, held, temperature)
    if n and not config.no_refit_uncertainty:
        state = slice_uncertainty(
            model, loader(fit_rows), held, cache.catalog.table["patient_id"].to_numpy(),
            temperature, coverage, method, mondrian=config.conformal_mondrian,
        )  # fmt: skip
    else:
        notes.append(NOT_REFITTED.format(why="--no_refit_uncertainty" if n else NO_LABELS))

    split = Split(
        train=fit_ids, val=held_ids, test=sorted(set(catalog.patients) - {*fit_ids, *held_ids}),
        strategy=f"adapt: {n} labelled patient(s) per known type, {config.holdout_share} held out"
        if n else "adapt: no labelled patients (all test)",
        seed=config.seed, extra={"ignored_patients_by_type": ignored},
    )  # fmt: skip
    split.save(outdir / SITE_SPLIT)
    changed = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    record = {
        "source_checkpoint": str(source.absolute()),
        "source_sha256": digest,
        "site_root": str(Path(config.site_root).absolute()),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            **asdict(config),
            "finetune": finetune,
            "coverage": coverage,
            "conformal_method": method,
        },
        "counts": {
            "site_patients": len(catalog.patients),
            "site_slices": len(cache),
            "skipped_slices": len(cache.catalog.problems),
            "finetune_patients": len(fit_ids),
            "heldout_patients": len(held_ids),
            "test_patients": len(split.test),
            "ignored_patients_by_type": ignored,
        },
        "input_check": inputs,
        "unlabelled": unlabelled,
        "finetune": tuned,
        "heldout": heldout,
        "temperature": {"source": loaded.temperature, "adapted": float(temperature)},
        "uncertainty_refitted": state is not None,
        "changed_tensors": changed_tensors(model, before, changed),
        "finetune_patients": fit_ids,
        "heldout_patients": held_ids,
        "notes": notes,
        "source_split": loaded.checkpoint.get("split"),
        "source_metadata": loaded.checkpoint.get("metadata"),
        "previous_adaptation": loaded.checkpoint.get("adaptation"),  # adapting an adapted one
    }
    payload = {k: v for k, v in loaded.checkpoint.items() if k != "format"}
    payload |= {"model_state": changed, "temperature": float(temperature), "adaptation": record}
    payload["metadata"] = run_metadata()
    if n:  # the patients the classifier, temperature and state were last fitted on
        payload["split"] = {k: getattr(split, k) for k in ("train", "val", "test", "strategy")}
    if state is not None:
        payload["uncertainty"] = state
    save_checkpoint(payload, target)
    save_resolved_config(asdict(config), outdir)
    report = {"output": str(target), **record}
    (outdir / REPORT).write_text(json.dumps(report, indent=2))
    return report


def check_config(config: AdaptConfig) -> str:
    """The values a recipe or --config could give wrong, refused before any work; returns the
    fine-tune mode used."""
    n = config.labelled_per_class
    finetune = config.finetune or ("head" if n > 0 else "none")
    wrong = {
        f"--unlabelled must be one of {', '.join(UNLABELLED)}": config.unlabelled not in UNLABELLED,
        f"--finetune must be one of {', '.join(FINETUNE)}": finetune not in FINETUNE,
        "--labelled_per_class must be 0 (off) or at least 2 (a patient per type to fine-tune, "
        "one held out)": n < 0 or n == 1,
        "--finetune needs labelled patients (--labelled_per_class N)": n == 0
        and finetune != "none",
        "nothing to adapt: --unlabelled none needs --labelled_per_class N": n == 0
        and config.unlabelled == "none",
        "--holdout_share must lie between 0 and 1": not 0 < config.holdout_share < 1,
        "--epochs and --tent_steps must be at least 1": min(config.epochs, config.tent_steps) < 1,
        "--patience must be ≥ 0 and --batch_size ≥ 2": config.patience < 0 or config.batch_size < 2,
        "--lr must be > 0 and --weight_decay ≥ 0": config.lr <= 0 or config.weight_decay < 0,
        "--device must be auto, cpu or cuda": config.device not in ("auto", "cpu", "cuda"),
        "--device cuda: no GPU is available": config.device == "cuda"
        and not torch.cuda.is_available(),
    }
    for message, bad in wrong.items():
        if bad:
            raise MritumorError(message)
    return finetune


def check_site_images(catalog, prep: Preprocessing, where) -> dict:
    """One slice of every patient decoded: refused when its channels are not the model's (grey
    stored as identical RGB channels is accepted for a 1-channel model: the cache averages them
    back to the grey image) or its shorter side is below half the model's input size
    (upsampling more than 2× invents detail the model never saw)."""
    wrong, small, grey_rgb, probed = [], [], 0, 0
    for row in catalog.table.groupby("patient_id", sort=False).head(1).itertuples(index=False):
        try:
            image = io.read_image(row.image, row.frame)
        except io.SliceReadError:
            continue  # the cache counts and skips it
        channel = getattr(row, "channel", None)  # a multi-source catalog's channel choice
        if channel is not None and not np.isnan(float(channel)) and int(channel) >= 0:
            image = image[int(channel) : int(channel) + 1]
        probed += 1
        if image.shape[0] != prep.channels:
            same = all(np.array_equal(image[0], c) for c in image[1:])
            if prep.channels == 1 and same:
                grey_rgb += 1
            else:
                wrong.append(f"{row.patient_id} ({image.shape[0]} channels)")
        if min(image.shape[1:]) < prep.image_size / 2:
            small.append(f"{row.patient_id} ({image.shape[1]}×{image.shape[2]})")
    if wrong:
        raise DataError(
            f"--site_root {where}: {len(wrong)} patient(s) have images whose channels differ from "
            f"the model's {prep.channels} (e.g. {', '.join(wrong[:3])}); use images of the same "
            "kind (grey vs RGB sequences) as the training data"
        )
    if small:
        raise DataError(
            f"--site_root {where}: {len(small)} patient(s) have images smaller than half the "
            f"model's input size {prep.image_size} px (e.g. {', '.join(small[:3])}); enlarging "
            "them would invent detail the model never saw"
        )
    return {"probed_slices": probed, "grey_stored_as_rgb_accepted": grey_rgb,
            "channels": prep.channels, "image_size": prep.image_size}  # fmt: skip


def draw_labelled(table, types, n: int, share: float, seed: int):
    """``n`` patients of every known type present at the site, drawn with ``seed``, each type's
    split into fine-tune and held-out parts (``share`` held out, at least one in each); the
    patients of other types (or no tumour) are counted and left out."""
    per_patient = table.groupby("patient_id", sort=True)["tumor_type"].first().astype(str)
    known = per_patient[per_patient.isin(types)]
    ignored = {str(t): int(c) for t, c in per_patient[~per_patient.isin(types)].value_counts().items()}  # fmt: skip
    if ignored:
        log.info("labelled draw: patients of types the model does not know left out: %s", ignored)
    if known.empty:
        raise DataError(
            f"no site patient has a tumour type the model knows ({', '.join(types)}); the site "
            f"has {', '.join(sorted(ignored))}: labelled adaptation is impossible"
        )
    counts = known.value_counts()
    short = [f"{t} ({counts[t]})" for t in types if 0 < counts.get(t, 0) < n]
    if short:
        raise DataError(
            f"--labelled_per_class {n} is more than the site has of {', '.join(short)} "
            f"patient(s); at most {min(counts[t] for t in counts.index)}"
        )
    absent = [t for t in types if t not in counts]
    if absent:
        log.warning("the site has no patient of %s: it is not adapted on them", ", ".join(absent))
    held_n = min(n - 1, max(1, round(share * n)))
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for tumour_type in types:
        if tumour_type in counts:
            patients = sorted(known.index[known == tumour_type])
            drawn = [patients[i] for i in rng.permutation(len(patients))[:n]]
            held += drawn[:held_n]
            fit += drawn[held_n:]
    return sorted(fit), sorted(held), ignored


def _loader_factory(cache, labels, batch_size):
    def loader(rows, shuffle=False, seed=0, drop_last=False):
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(
            SliceDataset(cache, rows, labels), batch_size=batch_size, shuffle=shuffle,
            generator=generator, drop_last=drop_last and len(rows) > batch_size,
        )  # fmt: skip

    return loader


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@contextmanager
def training_only(model: nn.Module, parameters: list):
    """Gradients for ``parameters`` alone; every flag restored and eval mode after."""
    flags = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    for p in parameters:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.eval()


@torch.no_grad()
def adabn(model: nn.Module, loader: DataLoader, quiet: bool = True) -> None:
    """Every BatchNorm layer's running statistics re-estimated on ``loader``'s images (AdaBN):
    statistics reset, the network run in eval mode with BatchNorm alone in train mode
    (momentum None: a cumulative average), and the result made exact with hooks: the mean
    and unbiased variance of each layer's input over all the site's pixels, pooled in float64,
    so neither the batch size nor the last, smaller batch weighs in. Nothing else changes."""
    layers = batchnorms(model)
    sums = {layer: [0, 0.0, 0.0] for layer in layers}

    def accumulate(layer, inputs):
        x = inputs[0].detach().double().transpose(0, 1).reshape(layer.num_features, -1)
        total = sums[layer]
        total[0] += x.shape[1]
        total[1] = total[1] + x.sum(dim=1)
        total[2] = total[2] + (x * x).sum(dim=1)

    momenta = {layer: layer.momentum for layer in layers}
    hooks = [layer.register_forward_pre_hook(accumulate) for layer in layers]
    model.eval()
    device = next(model.parameters()).device
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
            layer.train()
        for batch in tqdm(loader, desc="AdaBN", unit="batch", disable=quiet):
            model(batch["image"].to(device))
    finally:
        for hook in hooks:
            hook.remove()
        for layer in layers:
            layer.momentum = momenta[layer]
        model.eval()
    for layer, (count, total, squares) in sums.items():
        mean = total / count
        variance = (squares - count * mean * mean) / max(count - 1, 1)
        layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
        layer.running_var.copy_(variance.clamp_min(0).to(layer.running_var.dtype))


def tent(model: nn.Module, loader: DataLoader, steps: int, lr: float, quiet: bool = True) -> dict:
    """TENT: ``steps`` Adam steps minimising the mean entropy of the class prediction on site
    images, updating only the BatchNorm weights and biases, BatchNorm normalising with each
    batch's statistics (the rest in eval mode: no dropout). Follow with :func:`adabn`."""
    layers = batchnorms(model)
    trainable = [p for layer in layers for p in (layer.weight, layer.bias) if p is not None]
    optimiser = torch.optim.Adam(trainable, lr=lr)
    device, entropies, batches = next(model.parameters()).device, [], iter(())
    with training_only(model, trainable):
        for layer in layers:
            layer.train()
        for _ in tqdm(range(steps), desc="TENT", unit="step", disable=quiet):
            batch = next(batches, None)
            if batch is None:
                batches = iter(loader)
                batch = next(batches)
            logits = model(batch["image"].to(device))["class_logits"].float()
            entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
            optimiser.zero_grad()
            entropy.backward()
            optimiser.step()
            entropies.append(entropy.item())
    return {"steps": steps, "lr": lr, "entropy_first": entropies[0], "entropy_last": entropies[-1]}


def last_stage(model: nn.Module) -> list[nn.Module]:
    """The encoder's last stage: the layers of its body from the first one with parameters at
    the coarsest resolution that has any; of a dilated ResNet (fcn_resnet50, layers 2–4 at
    stride 8) only its last residual layer."""
    body = model.encoder.body
    x = torch.zeros(1, model.encoder.config.in_channels, *(2 * [model.encoder.config.image_size]))
    sizes, training = [], body.training
    body.eval()
    with torch.no_grad():
        for layer in body:
            x = layer(x)
            sizes.append(x.shape[-1])
    body.train(training)
    weighted = [i for i, layer in enumerate(body) if any(True for _ in layer.parameters())]
    first = min(i for i in weighted if sizes[i] == sizes[weighted[-1]])
    stage = list(body)[first:]
    residual = [m for m in stage if isinstance(m, nn.Sequential) and len(m) and all(hasattr(b, "conv1") for b in m)]  # fmt: skip
    return residual[-1:] if len(residual) > 1 else stage


def fine_tune(model, mode: str, train: DataLoader, held: DataLoader, config: AdaptConfig) -> dict:
    """AdamW on the class loss of the fine-tune slices, the classification layers (``head``)
    or those and the encoder's last stage trainable, BatchNorm in eval mode (the adapted
    statistics stay); the epoch with the lowest held-out loss is kept (epoch 0: unchanged)."""
    modules = [model.cls_hidden, model.cls_out] + (last_stage(model) if mode == "last_stage" else [])  # fmt: skip
    trainable = list(dict.fromkeys(p for m in modules for p in m.parameters()))
    optimiser = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    device = next(model.parameters()).device
    best_loss, best_epoch = heldout_metrics(model, held, 1.0)["nll"], 0
    best_state, history, waited = copy.deepcopy(model.state_dict()), [], 0
    bar = tqdm(range(1, config.epochs + 1), desc="fine-tune", unit="epoch", disable=config.quiet)
    with training_only(model, trainable):
        for epoch in bar:
            model.train()
            for layer in batchnorms(model):
                layer.eval()
            for batch in train:
                logits = model(batch["image"].to(device))["class_logits"].float()
                loss = nnf.cross_entropy(logits, batch["tumor_type"].to(device), ignore_index=-1)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            held_loss = heldout_metrics(model, held, 1.0)["nll"]
            history.append({"epoch": epoch, "heldout_loss": held_loss})
            bar.set_postfix(heldout_loss=f"{held_loss:.3f}")
            if held_loss < best_loss - 1e-6:
                best_loss, best_epoch, waited = held_loss, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                waited += 1
                if config.patience and waited >= config.patience:
                    break
    model.load_state_dict(best_state)
    return {"trainable_tensors": len(trainable), "epochs_run": len(history),
            "best_epoch": best_epoch, "history": history}  # fmt: skip


def heldout_metrics(model, loader: DataLoader, temperature: float) -> dict:
    """Slice accuracy and NLL (logits / ``temperature``) of the held-out slices."""
    outputs = predict_slices(model, loader)
    logits, truth = outputs["class_logits"].double(), torch.as_tensor(outputs["type_true"])
    known = truth >= 0
    logits, truth = logits[known], truth[known]
    return {
        "slices": int(len(truth)),
        "accuracy": float((logits.argmax(1) == truth).double().mean()),
        "nll": float(nnf.cross_entropy(logits / temperature, truth)),
        "temperature": float(temperature),
    }


def site_predictions(model, loader: DataLoader) -> dict:
    """Label-free summary of predictions on site slices: mean entropy and predicted-class
    shares (TENT's failure, a collapse onto one class, shows here)."""
    logits = predict_slices(model, loader)["class_logits"].double()
    probs = logits.softmax(1)
    shares = torch.bincount(probs.argmax(1), minlength=probs.shape[1]) / len(probs)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1).mean()
    return {"mean_entropy": float(entropy), "predicted_class_shares": shares.tolist()}


def changed_tensors(model: nn.Module, before: dict, after: dict) -> dict:
    """Names of the state-dict entries that changed, and their count by kind."""
    kinds = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, _BatchNorm):
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                kinds[prefix + key] = "batchnorm_statistics"
            for key in ("weight", "bias"):
                kinds[prefix + key] = "batchnorm_affine"
    names = [k for k in before if not torch.equal(before[k], after[k].to(before[k].device))]
    counts: dict[str, int] = {}
    for name in names:
        counts[kinds.get(name, "other")] = counts.get(kinds.get(name, "other"), 0) + 1
    return {"names": names, "counts": counts, "total_tensors": len(before)}


def sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
