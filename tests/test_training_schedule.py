"""The multi-task recipe's training ingredients against hand computations: the EMA of the
weights with its warm-up, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from mritumor.models.multitask import build_multitask_model
from mritumor.tasks.multitask import MultiTaskTask
from mritumor.training import ema_with_warmup, warmup_cosine


def test_ema_step_matches_the_hand_computed_average():
    average = ema_with_warmup(0.9)
    ema, values = torch.tensor(0.0), [1.0, 2.0, 4.0, 8.0]
    expected = 0.0
    for n, value in enumerate(values, start=1):
        ema = average(ema, torch.tensor(value), torch.tensor(n))
        rate = min(0.9, (1 + n) / (10 + n))
        expected = rate * expected + (1 - rate) * value
        assert ema.item() == pytest.approx(expected)


def test_task_validates_the_average_not_the_live_weights():
    torch.manual_seed(0)
    model = build_multitask_model("B", 2, "small_cnn", 1, 32)
    task = MultiTaskTask(model, 1e-3, 0.0, 3, ema_decay=0.5)
    task.on_train_batch_end(None, None, 0)  # first update copies the weights
    before = [p.detach().clone() for p in task.eval_model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    task.on_train_batch_end(None, None, 1)
    rate = min(0.5, 2 / 11)  # n_averaged = 1 at the second update
    for averaged, old, live in zip(
        task.eval_model.parameters(), before, model.parameters(), strict=True
    ):
        assert torch.allclose(averaged, rate * old + (1 - rate) * live)
    assert task.eval_model is not model
    assert MultiTaskTask(model, 1e-3, 0.0, 3).eval_model is model  # off: the live network


def test_warmup_then_cosine_learning_rates():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimiser = torch.optim.SGD([parameter], lr=1.0)
    schedule = warmup_cosine(optimiser, epochs=6, warmup_epochs=2)
    rates = []
    for _ in range(6):
        rates.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        schedule.step()
    # linear from 0.1 to 1 over two epochs, then cosine over the remaining four
    expected = [0.1, 0.55] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert rates == pytest.approx(expected)


def test_best_checkpoint_keeps_the_later_of_tied_epochs(tmp_path):
    from types import SimpleNamespace

    import torch

    from mritumor.checkpoints import load_checkpoint
    from mritumor.training import BestStateCheckpoint

    callback = BestStateCheckpoint(tmp_path / "best.pt", lambda m: {"epoch_seen": m.epoch}, "val_acc", "max")  # fmt: skip
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, max_epochs=5)
    for epoch, accuracy in enumerate([0.77, 0.70, 0.77, 0.74, 0.60]):
        trainer.current_epoch, trainer.callback_metrics = epoch, {"val_acc": torch.tensor(accuracy)}
        callback.on_train_epoch_end(trainer, SimpleNamespace(epoch=epoch))
    saved = load_checkpoint(tmp_path / "best.pt")
    assert callback.best_epoch == 2 and saved["epoch_seen"] == 2
    assert saved["training"]["best_epoch"] == 2 and saved["training"]["epochs_run"] == 3
    lower = BestStateCheckpoint(tmp_path / "loss.pt", lambda m: {}, "val_loss", "min")
    for epoch, loss in enumerate([1.0, 0.9, 1.2]):
        trainer.current_epoch, trainer.callback_metrics = epoch, {"val_loss": torch.tensor(loss)}
        lower.on_train_epoch_end(trainer, None)
    assert lower.best_epoch == 1
