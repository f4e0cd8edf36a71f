"""The names of the files a run folder holds: one place for what the commands write and what
``report``, ``compare``, ``evaluate`` and the demo look for."""

from __future__ import annotations

BEST_CHECKPOINT = "best.pt"  # train-hierarchical, train-multitask: the best epoch's weights
LAST_CHECKPOINT = "last.ckpt"  # in checkpoints/: Lightning's full state, for --resume
SSL_CHECKPOINT = "simclr_pretrain.pt"  # pretrain
CONFIG = "config.yaml"  # the resolved flags (re-usable with --config)
SPLIT = "split.json"  # the patients of each part
TEST_METRICS = "test_metrics.json"  # headline metrics with 95 % intervals
TEST_REPORT = "test_report.json"  # the full evaluation (per class, calibration, skipped)
PREDICTIONS = "predictions.csv"  # one row per test patient (or slice, multi-task)
CURVES_SUMMARY = "curves_summary.json"  # ROC/PR areas of the figures
UNCERTAINTY = "uncertainty.json"  # prediction sets, risk–coverage, OOD share
RISK_COVERAGE = "risk_coverage.png"
OVERLAYS = "overlays.png"  # multi-task: masks drawn on test slices
CV_SUMMARY = "cv_summary.json"  # train-hierarchical --cv K
COMPARISON_CSV = "comparison.csv"  # train-multitask --variant all, compare
COMPARISON_JSON = "comparison.json"  # compare
COMPARISON_MD = "comparison.md"  # the same tables for reading
EVALUATION = "evaluation.json"  # evaluate: what was evaluated, how
SITE_SPLIT = "site_split.json"  # adapt: fine-tune / held-out / untouched site patients
ADAPT_REPORT = "adapt_report.json"  # adapt: what was done, held-out metrics before and after
